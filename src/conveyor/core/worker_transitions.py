"""Worker task transitions: the legal ``(start, finish)`` pairs and what each one does.

Theory of operation
-------------------
The arrows are drawn in :mod:`conveyor.core.worker`, whose event handlers decide where a
task goes and call :meth:`WorkerTransitions._transition`; none of them sets ``ts.state``.
The driver looks the pair up in :data:`TRANSITIONS` (a pair missing from it raises
:class:`InvalidWorkerTransition` before anything changes), logs it to ``self.log``, sets
the state, and calls the pair's function, which does the bookkeeping of leaving
``start`` and entering ``finish``, emits the instructions that belong to the move into
``self._out``, and may move other tasks (a result in memory readies its dependents; a
release may drop the dependencies it alone kept); then it calls ``transition_hook``, if
the shell set one (worker plugins that listen). There is no arrow from a state to
itself: new holders for a ``fetch`` task re-queue it without a state change.

Containers kept in step by these functions, one per state that has one:

* ``ready`` / ``constrained``: the ``ready`` tasks, in priority order, the latter for tasks
  that need resources (``task_resources`` says how much, until they start);
* ``executing_keys``: tasks holding a thread (``executing``, and ``cancelled`` ones whose
  thread still runs); ``held_resources`` and ``available_resources`` the amounts they hold;
* ``long_running``: tasks that seceded; they run outside the thread budget (``cancelled``
  ones too, until they rejoin or end);
* ``data_needed``: per peer, the ``fetch`` tasks it holds, in priority order;
* ``in_flight_workers``: per peer, the keys of the transfer under way (``coming_from``
  names the peer on each task, ``flight`` or ``cancelled``);
* ``fetchable_peers``: the peers of ``data_needed`` not in ``in_flight_workers`` nor in
  ``busy_workers`` (peers that answered busy, until their retry is due);
* ``missing``: dependencies with no known holder.

A ``cancelled`` task tells where it came from by ``coming_from``: set, a transfer is
under way; ``None``, it still holds its thread (and its resources), or runs seceded when
its key is in ``long_running``.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, TypeVar

from conveyor.core import worker_events as we
from conveyor.core.heapset import HeapSet
from conveyor.core.types import Key, Priority

#: states of a task that still needs its dependencies' data
ACTIVE = frozenset({"waiting", "ready", "executing", "long-running"})

T = TypeVar("T")

#: The shared empty set of a task that has none of some kind: most tasks have no
#: dependencies, dependents or known holders. Four empty sets per task cost 864 bytes
#: (over 800 MB for a million results held in memory), and every full garbage collection
#: would walk them all. A set is made when its first element arrives.
_NONE: frozenset[Any] = frozenset()


def grown(items: set[T] | frozenset[T]) -> set[T]:
    """``items`` itself if it is a set of its own, else a new empty one to fill."""
    return items if type(items) is set else set()


def without(items: set[T] | frozenset[T], item: T) -> set[T] | frozenset[T]:
    """``items`` without ``item``: the same set, or the shared empty one once it empties."""
    if type(items) is set:
        items.discard(item)
        if items:
            return items
    return _NONE


class InvalidWorkerTransition(RuntimeError):
    """A worker task was asked to make a move that :data:`TRANSITIONS` does not allow."""


class WTask:
    """What a worker knows about one task or dependency."""

    __slots__ = (
        "coming_from",
        "computed",
        "dependencies",
        "dependents",
        "duration",
        "freed",
        "inline",
        "key",
        "nbytes",
        "priority",
        "run_id",
        "run_spec",
        "state",
        "type",
        "waiting_for_data",
        "who_has",
    )

    def __init__(self, key: Key) -> None:
        self.key = key
        self.state = "released"
        self.run_spec: Any = None
        self.priority: Priority = ()
        #: run_id of the latest ComputeTask for this key, echoed in the answer
        self.run_id = 0
        #: a client waits for the result: the shell sends small ones with the completion
        self.inline = False
        self.duration = 0.0
        self.dependencies: set[WTask] | frozenset[WTask] = _NONE
        self.dependents: set[WTask] | frozenset[WTask] = _NONE
        self.waiting_for_data: set[WTask] | frozenset[WTask] = _NONE
        self.who_has: set[str] | frozenset[str] = _NONE
        self.nbytes = -1
        self.type: str | None = None
        #: peer a transfer is running from (flight, or cancelled while in flight)
        self.coming_from: str | None = None
        #: the scheduler asked this worker to compute (or hold) this key
        self.computed = False
        #: the scheduler freed it while local tasks still needed its data
        self.freed = False

    def __repr__(self) -> str:
        return f"<WTask {self.key!r} {self.state}>"

    def __lt__(self, other: WTask) -> bool:
        return self.priority < other.priority

    # Hashed by identity, in C, like the scheduler's TaskState: a Python-level __hash__
    # is called on every set and queue operation. Sets of tasks then iterate in an order
    # that depends on memory addresses; nothing may rely on it.


class ReplayableWTask(WTask):
    """A WTask hashed by key, so sets of tasks iterate in the same order on every run.

    Used by ``WorkerState(replayable=True)`` (the seeded simulation), where a failing
    seed must replay exactly. Equality stays identity.
    """

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(self.key)


class WorkerTransitions:
    """State containers and the transition functions of a worker."""

    def __init__(
        self,
        address: str,
        nthreads: int,
        *,
        transfer_message_bytes_limit: int = 50_000_000,
        outgoing_connections: int = 50,
        prefetch_seconds: float = 0.001,
        prefetch_per_thread: int = 8,
        validate: bool = False,
        log_length: int = 10_000,
        replayable: bool = False,
        resources: dict[str, float] | None = None,
    ) -> None:
        self.address = address
        #: the record type: ``ReplayableWTask`` when runs must replay exactly
        self.task_type: type[WTask] = ReplayableWTask if replayable else WTask
        self.nthreads = nthreads
        self.transfer_message_bytes_limit = transfer_message_bytes_limit
        self.outgoing_connections = outgoing_connections
        self.prefetch_seconds = prefetch_seconds
        self.prefetch_per_thread = prefetch_per_thread
        self.validate_state = validate
        self.tasks: dict[Key, WTask] = {}
        self.ready: HeapSet[WTask] = HeapSet()
        #: resource name -> amount this worker offers, and the amounts not held by a task
        self.total_resources: dict[str, float] = dict(resources or {})
        self.available_resources: dict[str, float] = dict(self.total_resources)
        #: ready tasks that need resources, in priority order (their state is "ready")
        self.constrained: HeapSet[WTask] = HeapSet()
        #: what each task that needs resources needs, until it starts (no entry: nothing)
        self.task_resources: dict[WTask, dict[str, float]] = {}
        #: what each executing task holds, by key
        self.held_resources: dict[Key, dict[str, float]] = {}
        self.executing_keys: set[Key] = set()
        #: tasks that seceded (``secede()``): running, but outside the thread budget
        self.long_running: set[Key] = set()
        #: seceded tasks waiting for a slot to rejoin, in the order they asked
        self.rejoining: deque[Key] = deque()
        #: memory is short: start no task and fetch nothing until it is not
        self.paused = False
        self.data_needed: dict[str, HeapSet[WTask]] = {}
        self.in_flight_workers: dict[str, list[Key]] = {}
        #: the peers of ``data_needed`` with no transfer in flight, in the order they
        #: became so: the only ones a new transfer may start from (an ordered dict,
        #: whose first entry is O(1) to reach however many came and went before it)
        self.fetchable_peers: OrderedDict[str, None] = OrderedDict()
        #: peers that answered a fetch with "busy", until ``RetryBusyWorkerEvent``
        self.busy_workers: set[str] = set()
        #: busy answers in a row, by peer (cleared by its next real answer)
        self.busy_streak: dict[str, int] = {}
        self.missing: set[WTask] = set()
        self.log: deque[tuple[Key, str, str, float]] = deque(maxlen=log_length)
        #: called as ``hook(key, start, finish, now)`` after every transition, once its
        #: bookkeeping is done (the shell sets it only while a plugin listens: it must
        #: not raise)
        self.transition_hook: Callable[[Key, str, str, float], None] | None = None
        self._out: list[we.WorkerInstruction] = []
        self._now = 0.0

    # ------------------------------------------------------------------ driver

    def _transition(self, ts: WTask, finish: str, arg: Any = None) -> None:
        """Move ``ts`` to ``finish``: log it, set it, and do the pair's bookkeeping.

        ``arg`` goes to the pair's function: what the move needs from its event (the
        outcome of an execution, the size of data that arrived, the peer of a transfer).
        A pair not in :data:`TRANSITIONS` changes nothing and raises.
        """
        start = ts.state
        try:
            fn = _BY_START[start][finish]
        except KeyError:
            raise InvalidWorkerTransition(f"{ts.key!r}: {start} -> {finish}") from None
        self.log.append((ts.key, start, finish, self._now))
        ts.state = finish
        fn(self, ts, arg)
        if self.transition_hook is not None:
            self.transition_hook(ts.key, start, finish, self._now)

    # ----------------------------------------------------- decisions shared by events

    def _task(self, key: Key) -> WTask:
        ts = self.tasks.get(key)
        if ts is None:
            ts = self.tasks[key] = self.task_type(key)
        return ts

    def _find_holders(self, ts: WTask, who_has: set[str] | frozenset[str]) -> None:
        """``ts`` (``released``, ``fetch``, ``missing`` or ``flight``) is held by
        ``who_has``: fetch it from them, or, when no other worker has it, wait for the
        scheduler to name a holder (``missing``)."""
        if ts.state == "fetch":
            self._leave_fetch(ts)  # queued by its old holders
        ts.who_has = without(who_has, self.address)
        finish = "fetch" if ts.who_has else "missing"
        if ts.state != finish:
            self._transition(ts, finish)
        elif finish == "fetch":
            self._join_fetch(ts)  # new holders, the same state

    def _release(self, ts: WTask) -> None:
        """Drop ``ts`` and whatever it alone kept here; forget it unless a task here
        depends on it."""
        if ts.state != "released":
            self._transition(ts, "released")
        if not ts.dependents:
            self._transition(ts, "forgotten")

    def _has_active_dependents(self, ts: WTask) -> bool:
        return any(d.state in ACTIVE for d in ts.dependents)

    def _maybe_drop(self, dep: WTask) -> None:
        """A dependent of ``dep`` went away: drop ``dep`` if nothing here needs it."""
        if dep.state == "memory":
            if dep.freed and not self._has_active_dependents(dep):
                self._release(dep)
            return
        if dep.dependents or dep.computed:
            return
        if dep.state in ("fetch", "missing", "released"):
            self._release(dep)
        elif dep.state == "flight":
            self._transition(dep, "cancelled")

    # ------------------------------------------------- bookkeeping of one container

    def _join_fetch(self, ts: WTask) -> None:
        for worker in ts.who_has:
            heap = self.data_needed.get(worker)
            if heap is None:
                heap = self.data_needed[worker] = HeapSet()
                if worker not in self.in_flight_workers and worker not in self.busy_workers:
                    self.fetchable_peers[worker] = None
            heap.add(ts)

    def _leave_fetch(self, ts: WTask) -> None:
        for worker in ts.who_has:
            heap = self.data_needed.get(worker)
            if heap is not None:
                heap.discard(ts)
                if not heap:
                    del self.data_needed[worker]
                    self.fetchable_peers.pop(worker, None)

    def _release_held(self, key: Key) -> None:
        """The task ``key`` stopped executing: its resources are available again."""
        need = self.held_resources.pop(key, None)
        if need is not None:
            available = self.available_resources
            for name, amount in need.items():
                available[name] = available.get(name, 0.0) + amount

    def _put_in_memory(self, ts: WTask, nbytes: int) -> None:
        """Entering ``memory``: dependents waiting for nothing else are ready."""
        ts.nbytes = nbytes
        if ts.dependents:
            self._ready_dependents(ts)

    def _ready_dependents(self, ts: WTask) -> None:
        for dts in ts.dependents:
            if ts in dts.waiting_for_data:
                dts.waiting_for_data = without(dts.waiting_for_data, ts)
                if not dts.waiting_for_data and dts.state == "waiting":
                    self._transition(dts, "ready")

    def _thread_done(self, ts: WTask) -> None:
        """Leaving ``cancelled``: the thread or transfer it kept is over."""
        if ts.coming_from is None:  # it held a thread, or ran seceded
            self.executing_keys.discard(ts.key)
            self.long_running.discard(ts.key)
            if self.held_resources:
                self._release_held(ts.key)
        else:
            ts.coming_from = None

    # ----------------------------------------------------- transition functions
    # Each takes the task and one argument: what the move needs from its event (the
    # outcome of an execution, the size of data that arrived, the peer of a transfer),
    # or None. One fixed signature keeps the driver's call a plain, fast one.

    def _no_bookkeeping(self, ts: WTask, _: None) -> None:
        """A move whose states keep no container of their own."""

    def _to_ready(self, ts: WTask, _: None) -> None:
        """Entering ``ready``: queued in ``constrained`` if it needs resources."""
        if self.task_resources and ts in self.task_resources:
            self.constrained.add(ts)
        else:
            self.ready.add(ts)

    def _fetch_waiting(self, ts: WTask, _: None) -> None:
        self._leave_fetch(ts)

    def _fetch_ready(self, ts: WTask, _: None) -> None:
        self._leave_fetch(ts)
        self._to_ready(ts, None)

    def _missing_waiting(self, ts: WTask, _: None) -> None:
        self.missing.discard(ts)

    def _missing_ready(self, ts: WTask, _: None) -> None:
        self.missing.discard(ts)
        self._to_ready(ts, None)

    def _flight_waiting(self, ts: WTask, _: None) -> None:
        ts.coming_from = None

    def _flight_ready(self, ts: WTask, _: None) -> None:
        ts.coming_from = None
        self._to_ready(ts, None)

    def _ready_executing(self, ts: WTask, _: None) -> None:
        if self.task_resources and (need := self.task_resources.pop(ts, None)) is not None:
            self.constrained.discard(ts)
            available = self.available_resources
            for name, amount in need.items():
                available[name] = available.get(name, 0.0) - amount
            self.held_resources[ts.key] = need
        else:
            self.ready.discard(ts)
        self.executing_keys.add(ts.key)
        self._out.append(we.Execute(ts.key))

    def _ran_memory(self, ts: WTask, e: we.ExecuteSuccess) -> None:
        """executing or long-running -> memory: its thread is free, its result here."""
        key = ts.key
        self.executing_keys.discard(key)
        self.long_running.discard(key)
        if self.held_resources:
            self._release_held(key)
        ts.type = e.type
        ts.run_spec = None  # the result is here: a new request would bring its own
        ts.nbytes = e.nbytes
        if ts.dependents:
            self._ready_dependents(ts)
        self._out.append(we.TaskFinishedMsg(key, e.nbytes, e.type, e.start, e.stop, ts.run_id))
        for dep in ts.dependencies:
            if dep.freed:
                self._maybe_drop(dep)

    def _ran_error(self, ts: WTask, e: we.ExecuteFailure) -> None:
        """executing or long-running -> error: its thread is free, the error reported."""
        key = ts.key
        self.executing_keys.discard(key)
        self.long_running.discard(key)
        if self.held_resources:
            self._release_held(key)
        ts.run_spec = None
        self._out.append(
            we.TaskErredMsg(
                key,
                e.exception,
                e.traceback,
                e.exception_text,
                e.traceback_text,
                e.start,
                e.stop,
                ts.run_id,
            )
        )
        for dep in ts.dependencies:
            if dep.freed:
                self._maybe_drop(dep)

    def _executing_long_running(self, ts: WTask, _: None) -> None:
        self.executing_keys.discard(ts.key)
        self.long_running.add(ts.key)
        self._out.append(we.LongRunningMsg(ts.key, ts.run_id))

    def _long_running_executing(self, ts: WTask, _: None) -> None:
        self.long_running.discard(ts.key)
        self.executing_keys.add(ts.key)

    def _cancelled_long_running(self, ts: WTask, _: None) -> None:
        # asked for again while it runs seceded: it never left ``long_running``
        assert ts.key in self.long_running, ts

    def _cancelled_memory(self, ts: WTask, _: None) -> None:
        # the late result was stored by the shell; the caller releases it at once
        self._thread_done(ts)

    def _to_fetch(self, ts: WTask, _: None) -> None:
        self._join_fetch(ts)

    def _to_missing(self, ts: WTask, _: None) -> None:
        self.missing.add(ts)

    def _missing_fetch(self, ts: WTask, _: None) -> None:
        self.missing.discard(ts)
        self._join_fetch(ts)

    def _fetch_missing(self, ts: WTask, _: None) -> None:
        self._leave_fetch(ts)
        self.missing.add(ts)

    def _fetch_flight(self, ts: WTask, worker: str) -> None:
        self._leave_fetch(ts)
        ts.coming_from = worker
        keys = self.in_flight_workers.get(worker)
        if keys is None:
            keys = self.in_flight_workers[worker] = []
            self.fetchable_peers.pop(worker, None)
        keys.append(ts.key)

    def _flight_fetch(self, ts: WTask, _: None) -> None:
        ts.coming_from = None
        self._join_fetch(ts)

    def _flight_missing(self, ts: WTask, _: None) -> None:
        ts.coming_from = None
        self.missing.add(ts)

    def _released_memory(self, ts: WTask, nbytes: int) -> None:
        self._put_in_memory(ts, nbytes)

    def _fetch_memory(self, ts: WTask, nbytes: int) -> None:
        self._leave_fetch(ts)
        self._put_in_memory(ts, nbytes)

    def _missing_memory(self, ts: WTask, nbytes: int) -> None:
        self.missing.discard(ts)
        self._put_in_memory(ts, nbytes)

    def _flight_memory(self, ts: WTask, nbytes: int) -> None:
        """A transfer brought ``ts``. A key this worker was asked to compute is reported
        finished; the caller reports copies in one ``AddKeysMsg``."""
        ts.coming_from = None
        self._put_in_memory(ts, nbytes)
        if ts.computed:
            self._out.append(we.TaskFinishedMsg(ts.key, nbytes, ts.type, 0.0, 0.0, ts.run_id))

    def _memory_released(self, ts: WTask, _: None) -> None:
        # every result ends this way: _released written out (a call less per task)
        self._out.append(we.DeleteData([ts.key]))
        if self.task_resources:
            self.task_resources.pop(ts, None)
        ts.run_spec = None
        ts.computed = ts.freed = False
        ts.waiting_for_data = _NONE
        if ts.dependencies:
            deps, ts.dependencies = ts.dependencies, _NONE
            for dep in deps:
                dep.dependents = without(dep.dependents, ts)
                self._maybe_drop(dep)

    def _ready_released(self, ts: WTask, _: None) -> None:
        self.ready.discard(ts)
        self.constrained.discard(ts)
        self._released(ts, None)

    def _fetch_released(self, ts: WTask, _: None) -> None:
        self._leave_fetch(ts)
        self._released(ts, None)

    def _missing_released(self, ts: WTask, _: None) -> None:
        self.missing.discard(ts)
        self._released(ts, None)

    def _cancelled_released(self, ts: WTask, _: None) -> None:
        self._thread_done(ts)
        self._released(ts, None)

    def _released(self, ts: WTask, _: None) -> None:
        """Entering ``released``: nothing of the task is kept but its dependents' links;
        dependencies it alone needed may go."""
        if self.task_resources:
            self.task_resources.pop(ts, None)
        ts.run_spec = None
        ts.computed = ts.freed = False
        ts.waiting_for_data = _NONE
        deps, ts.dependencies = ts.dependencies, _NONE
        for dep in deps:
            dep.dependents = without(dep.dependents, ts)
            self._maybe_drop(dep)

    def _released_forgotten(self, ts: WTask, _: None) -> None:
        del self.tasks[ts.key]


_Fn = Callable[..., None]
_T = WorkerTransitions

#: The legal transitions; any other pair raises :class:`InvalidWorkerTransition`.
TRANSITIONS: dict[tuple[str, str], _Fn] = {
    # a task to compute here
    ("released", "waiting"): _T._no_bookkeeping,
    ("released", "ready"): _T._to_ready,
    ("error", "waiting"): _T._no_bookkeeping,
    ("error", "ready"): _T._to_ready,
    ("fetch", "waiting"): _T._fetch_waiting,
    ("fetch", "ready"): _T._fetch_ready,
    ("missing", "waiting"): _T._missing_waiting,
    ("missing", "ready"): _T._missing_ready,
    ("flight", "waiting"): _T._flight_waiting,
    ("flight", "ready"): _T._flight_ready,
    ("waiting", "ready"): _T._to_ready,
    ("ready", "executing"): _T._ready_executing,
    ("executing", "memory"): _T._ran_memory,
    ("executing", "error"): _T._ran_error,
    ("executing", "long-running"): _T._executing_long_running,
    ("long-running", "executing"): _T._long_running_executing,
    ("long-running", "memory"): _T._ran_memory,
    ("long-running", "error"): _T._ran_error,
    # a dependency held elsewhere, or a copy the scheduler asked for
    ("released", "fetch"): _T._to_fetch,
    ("released", "missing"): _T._to_missing,
    ("missing", "fetch"): _T._missing_fetch,
    ("fetch", "missing"): _T._fetch_missing,
    ("fetch", "flight"): _T._fetch_flight,
    ("flight", "memory"): _T._flight_memory,
    ("flight", "fetch"): _T._flight_fetch,
    ("flight", "missing"): _T._flight_missing,
    # data put here directly (scatter)
    ("released", "memory"): _T._released_memory,
    ("fetch", "memory"): _T._fetch_memory,
    ("missing", "memory"): _T._missing_memory,
    # freed while its thread or transfer runs, and resumed or finished
    ("executing", "cancelled"): _T._no_bookkeeping,
    ("long-running", "cancelled"): _T._no_bookkeeping,  # still seceded: stays in long_running
    ("flight", "cancelled"): _T._no_bookkeeping,
    ("cancelled", "executing"): _T._no_bookkeeping,
    ("cancelled", "long-running"): _T._cancelled_long_running,
    ("cancelled", "flight"): _T._no_bookkeeping,
    ("cancelled", "memory"): _T._cancelled_memory,
    ("cancelled", "released"): _T._cancelled_released,
    # letting go
    ("waiting", "released"): _T._released,
    ("ready", "released"): _T._ready_released,
    ("memory", "released"): _T._memory_released,
    ("error", "released"): _T._released,
    ("fetch", "released"): _T._fetch_released,
    ("missing", "released"): _T._missing_released,
    ("released", "forgotten"): _T._released_forgotten,
}

#: The same table by start state, then finish state: how the driver reads it (two
#: lookups of interned strings cost less than hashing a tuple made per move).
_BY_START: dict[str, dict[str, _Fn]] = {
    state: {finish: fn for (start, finish), fn in TRANSITIONS.items() if start == state}
    for pair in TRANSITIONS
    for state in pair
}
