"""Where a restricted task may run: worker restrictions and worker resources.

Theory of operation
-------------------
A worker may declare amounts of abstract resources (``{"GPU": 2, "MEM": 10e9}``). A task
restricted to resources (``{"GPU": 1}``) runs only on a worker with at least that much of
each one *free*: a task holds its amounts on its worker from ``_add_processing`` until
``_remove_processing`` (``ws.used_resources``), whatever way it leaves (result, error,
release, its worker's death). A task may also name workers (addresses or names); with
``allow_other_workers`` (``loose_restrictions``) it runs elsewhere when none of them can
ever run it. Resources are never relaxed: a GPU task never runs on a worker without one.

A restricted task that cannot start now waits in ``no-worker`` (``unrunnable``). Those
waiting for resources are also kept in :class:`ResourceBook` ``waiting``, one priority
queue per distinct set of needs, so that when amounts come free on a worker (a task left
it, or it joined) the highest-priority tasks that fit there start, without scanning every
waiting task. Tasks waiting only for named workers are retried when a worker joins.

Unrestricted tasks pay nothing: their restrictions live in the task's rare-fields record
(``ts._rare is None`` for them), so every check here starts with one attribute read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.core.heapset import HeapSet
from conveyor.core.records import TaskState, WorkerInfo

if TYPE_CHECKING:
    from conveyor.core.records import _RareFields

#: a task's resource needs in a hashable, canonical form
Signature = tuple[tuple[str, float], ...]
#: amounts this close are equal (sums of fractional amounts drift)
_EPSILON = 1e-9
#: waiting tasks passed over (named workers exclude the worker) in one offer, at most
_MOST_SKIPPED = 20


def signature(need: dict[str, float]) -> Signature:
    """The canonical form of a set of resource needs."""
    return tuple(sorted(need.items()))


def fits(ws: WorkerInfo, need: dict[str, float]) -> bool:
    """Whether ``ws`` has at least ``need`` of every resource free now."""
    have, used = ws.resources, ws.used_resources
    for name, amount in need.items():
        if have.get(name, 0.0) - used.get(name, 0.0) < amount - _EPSILON:
            return False
    return True


def could_fit(ws: WorkerInfo, need: dict[str, float]) -> bool:
    """Whether ``ws`` offers at least ``need`` of every resource (free or not)."""
    have = ws.resources
    return all(have.get(name, 0.0) >= amount - _EPSILON for name, amount in need.items())


class ResourceBook:
    """Which workers offer each resource, and the tasks waiting for amounts to free."""

    __slots__ = ("holders", "waiting")

    def __init__(self) -> None:
        #: resource name -> the workers offering some of it, by address
        self.holders: dict[str, dict[str, WorkerInfo]] = {}
        #: tasks in ``no-worker`` for want of resources, one queue per distinct need
        self.waiting: dict[Signature, HeapSet[TaskState]] = {}

    def add_worker(self, ws: WorkerInfo) -> None:
        """Count the resources ``ws`` offers."""
        for name, amount in ws.resources.items():
            if amount > 0:
                self.holders.setdefault(name, {})[ws.address] = ws

    def remove_worker(self, ws: WorkerInfo) -> None:
        """Forget the resources ``ws`` offered."""
        for name in ws.resources:
            holders = self.holders.get(name)
            if holders is not None:
                holders.pop(ws.address, None)
                if not holders:
                    del self.holders[name]

    def candidates(self, need: dict[str, float]) -> list[WorkerInfo]:
        """The workers offering enough of every resource in ``need`` (busy or not)."""
        fewest: dict[str, WorkerInfo] = {}
        for i, name in enumerate(need):
            holders = self.holders.get(name)
            if holders is None:
                return []
            if i == 0 or len(holders) < len(fewest):
                fewest = holders
        return [ws for ws in fewest.values() if could_fit(ws, need)]

    def most(self, name: str) -> float:
        """The largest amount of resource ``name`` any worker offers (0 if none)."""
        holders = self.holders.get(name)
        return max((ws.resources[name] for ws in holders.values()), default=0.0) if holders else 0.0

    def park(self, ts: TaskState, need: dict[str, float]) -> None:
        """``ts`` waits (in ``no-worker``) until amounts ``need`` come free somewhere."""
        key = signature(need)
        heap = self.waiting.get(key)
        if heap is None:
            heap = self.waiting[key] = HeapSet()
        heap.add(ts)

    def unpark(self, ts: TaskState, need: dict[str, float]) -> None:
        """``ts`` no longer waits for resources."""
        key = signature(need)
        heap = self.waiting.get(key)
        if heap is not None:
            heap.discard(ts)
            if not heap:
                del self.waiting[key]

    def nwaiting(self) -> int:
        """How many tasks wait for resources."""
        return sum(len(h) for h in self.waiting.values())


def acquire(ws: WorkerInfo, need: dict[str, float]) -> None:
    """``ws`` runs a task holding ``need``."""
    used = ws.used_resources
    for name, amount in need.items():
        used[name] = used.get(name, 0.0) + amount


def release(ws: WorkerInfo, need: dict[str, float]) -> None:
    """A task holding ``need`` left ``ws``."""
    used = ws.used_resources
    for name, amount in need.items():
        left = used.get(name, 0.0) - amount
        used[name] = 0.0 if left < _EPSILON else left


class Restrictions:
    """Placement of restricted tasks; mixed into the scheduler's transitions."""

    if TYPE_CHECKING:
        workers: dict[str, WorkerInfo]
        names: dict[str | int, str]
        unrunnable: set[TaskState]
        resource_book: ResourceBook

        def _transition(
            self, ts: TaskState, finish: str, recs: dict[TaskState, str], **kwargs: Any
        ) -> None: ...

    def _named_workers(self, named: frozenset[Any]) -> list[WorkerInfo]:
        """The connected workers among ``named`` (addresses, or names of workers that
        joined after the task was submitted)."""
        out = []
        workers, names = self.workers, self.names
        for a in named:
            ws = workers.get(a)
            if ws is None:
                address = names.get(a)
                ws = workers.get(address) if address is not None else None
            if ws is not None:
                out.append(ws)
        return out

    def _restricted_pool(self, rare: _RareFields) -> list[WorkerInfo] | None:
        """The workers a restricted task may start on now (empty: none), or None when
        its restrictions leave the choice open (named workers gone, other workers
        allowed, no resources needed)."""
        named = rare.worker_restrictions
        pool = None if named is None else self._named_workers(named)
        need: dict[str, float] | None = rare.resource_restrictions
        if need is None:
            if not pool and rare.loose_restrictions:
                return None
            return pool
        if (
            pool is not None
            and rare.loose_restrictions
            and not any(could_fit(ws, need) for ws in pool)
        ):
            pool = None  # none of the named workers could ever run it: any may
        if pool is None:
            pool = self.resource_book.candidates(need)
        return [ws for ws in pool if fits(ws, need)]

    def _may_run_on(self, ts: TaskState, ws: WorkerInfo, need: dict[str, float]) -> bool:
        """Whether the worker restrictions of ``ts`` (which needs ``need``) allow ``ws``."""
        named = ts.worker_restrictions
        if named is None or ws.address in named or ws.name in named:
            return True
        if not ts.loose_restrictions:
            return False
        return not any(could_fit(w, need) for w in self._named_workers(named))

    def _to_no_worker(self, ts: TaskState) -> None:
        """``ts`` cannot start anywhere now: it waits in ``no-worker``."""
        ts.state = "no-worker"
        self.unrunnable.add(ts)
        rare = ts._rare
        if rare is not None and rare.resource_restrictions is not None:
            self.resource_book.park(ts, rare.resource_restrictions)

    def _leave_no_worker(self, ts: TaskState) -> None:
        self.unrunnable.discard(ts)
        rare = ts._rare
        if rare is not None and rare.resource_restrictions is not None:
            self.resource_book.unpark(ts, rare.resource_restrictions)

    def _offer_resources(self, ws: WorkerInfo, recs: dict[TaskState, str]) -> None:
        """Start the tasks waiting for resources that fit on ``ws`` now, highest
        priority first within each distinct need."""
        for heap in list(self.resource_book.waiting.values()):
            skipped: list[TaskState] = []
            while heap:
                ts = heap.peek()
                need = ts.resource_restrictions
                assert need is not None
                if not fits(ws, need):
                    break  # the rest of this queue needs the same
                if not self._may_run_on(ts, ws, need):
                    skipped.append(heap.pop())
                    if len(skipped) >= _MOST_SKIPPED:
                        break
                    continue
                self._transition(ts, "processing", recs, worker=ws)
            for ts in skipped:  # back in line (its queue may have been dropped meanwhile)
                need = ts.resource_restrictions
                assert need is not None
                self.resource_book.park(ts, need)
