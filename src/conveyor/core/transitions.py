"""Scheduler task transitions: the legal ``(start, finish)`` pairs and what each one does.

Theory of operation
-------------------
A task moves through ``released -> waiting -> (queued | no-worker) -> processing -> memory``
or ``erred``, and ends ``forgotten``. Event handlers (``scheduler.py``) never set
``ts.state`` themselves; they call :meth:`SchedulerTransitions._transition` or put a
*recommendation* ``{task: finish_state}`` into a dict that :meth:`_transitions` drains.
Each transition function may add further recommendations and append instructions to
``self._out``. A pair missing from :data:`TRANSITIONS` is routed through ``released``.

Some arrows are conditional and may leave the task where it is:

* ``waiting -> processing`` lands in ``queued`` (root-ish task, every worker's slots are
  full) or ``no-worker`` (no worker can run it);
* ``* -> released`` is a no-op while a client or a waiting dependent still needs the
  task, unless ``force=True`` (worker death, lost data, retries);
* ``released -> forgotten`` is a no-op while the task has dependents or is wanted.

Bookkeeping kept in step by these functions:

* ``ts.nwaiting``: how many dependencies of a ``waiting`` task are not yet in memory;
* ``ts.waiters``: dependents in an active state (waiting .. processing) that need ``ts``;
* ``ws.processing`` / ``ws.occupancy``: tasks sent to a worker and their expected time;
* ``idle``, ``saturated`` and the open-slot set, updated whenever ``processing`` changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from dask.utils import key_split

from conveyor.core.heapset import HeapSet
from conveyor.core.housekeeping import PrefixMemory
from conveyor.core.instructions import (
    ComputeTask,
    FreeFunctions,
    FreeKeys,
    Instruction,
    KeyErred,
    KeyInMemory,
    LostData,
)
from conveyor.core.liveness import Liveness
from conveyor.core.log import TransitionLog
from conveyor.core.placement import Placement
from conveyor.core.records import (
    EMPTY,
    ClientInfo,
    ReplayableTaskState,
    SharedBlob,
    TaskGroup,
    TaskPrefix,
    TaskState,
    WorkerInfo,
    add_to,
    discard_from,
)
from conveyor.core.restrictions import ResourceBook, acquire, release
from conveyor.core.ring import Ring
from conveyor.core.types import Key

Recs = dict[TaskState, str]

#: dask's key_split keeps an LRU cache of 100,000 keys (about 94 bytes a task); the
#: scheduler splits each key once, so it calls the function beneath the cache
_split: Callable[[Key], str] = getattr(key_split, "__wrapped__", key_split)

ACTIVE = frozenset({"waiting", "queued", "no-worker", "processing"})
#: states a task leaves for ``released`` once nothing needs it
RELEASABLE = ACTIVE | {"memory"}


def prefix_and_group(key: Key) -> tuple[str, str]:
    """The names of the key prefix and the task group of ``key``: a tuple key's group is
    its first element, any other key's group is its prefix."""
    prefix = str(_split(key))
    if isinstance(key, tuple) and key and isinstance(key[0], str):
        return prefix, key[0]
    return prefix, prefix


class InvalidTransition(RuntimeError):
    """A transition that no table entry or route through ``released`` allows."""


class SchedulerTransitions(Placement):
    """State containers and the transition functions of the scheduler."""

    def __init__(
        self,
        *,
        allowed_failures: int = 3,
        validate: bool = False,
        transition_log_length: int = 100_000,
        unknown_task_duration: float = 0.5,
        default_task_durations: dict[str, float] | None = None,
        worker_saturation: float = 1.1,
        bandwidth: float = 100e6,
        pipeline_seconds: float = 0.005,
        max_pipeline: int = 32,
        replayable: bool = False,
    ) -> None:
        self.allowed_failures = allowed_failures
        #: the record type of new tasks: hashed by key when runs must replay exactly
        self.task_type: type[TaskState] = ReplayableTaskState if replayable else TaskState
        self.validate_state = validate
        self.unknown_task_duration = unknown_task_duration
        self.default_task_durations = dict(default_task_durations or {})
        self.worker_saturation = worker_saturation
        self.pipeline_seconds = pipeline_seconds
        self.max_pipeline = max_pipeline
        self.bandwidth = bandwidth
        self.tasks: dict[Key, TaskState] = {}
        self.task_prefixes: dict[str, TaskPrefix] = {}
        self.task_groups: dict[str, TaskGroup] = {}
        #: prefixes with no task group left, and since when (oldest first)
        self.empty_prefixes: dict[str, float] = {}
        #: learned durations of prefixes forgotten since (core/housekeeping.py)
        self.prefix_memory = PrefixMemory()
        self.workers: dict[str, WorkerInfo] = {}
        self.clients: dict[str, ClientInfo] = {}
        #: workers running fewer tasks than they have threads
        self.idle: dict[str, WorkerInfo] = {}
        #: workers with more tasks than threads
        self.saturated: set[WorkerInfo] = set()
        #: tasks no current worker can run (restrictions)
        self.unrunnable: set[TaskState] = set()
        #: workers being retired: connected, but given no tasks (see core/control.py)
        self.retiring: dict[str, WorkerInfo] = {}
        #: workers whose memory is over their pause threshold (core/control.py)
        self.paused: dict[str, WorkerInfo] = {}
        #: workers' resources, and the tasks in ``unrunnable`` waiting for some to free
        self.resource_book = ResourceBook()
        #: root-ish tasks held back until a worker has an open slot
        self.queued: HeapSet[TaskState] = HeapSet()
        self.open_slots: dict[str, WorkerInfo] = {}
        #: every worker, in the order they take turns being weighed for placement
        self._ring = Ring()
        self._ring_at = 0
        #: every worker, by when it was last heard from (for the worker ttl)
        self._liveness = Liveness()
        #: tasks processing on any worker: the sum of ``len(ws.processing)``
        self.nprocessing = 0
        #: shared blobs (functions, chunks of graph nodes or call arguments) by id
        self.functions: dict[str, SharedBlob] = {}
        self.total_nthreads = 0
        self.transition_log = TransitionLog(transition_log_length)
        self.transition_counter = 0
        #: called as ``hook(key, start, finish, stimulus)`` after every transition (the
        #: shell sets it only while a plugin listens: it must not raise)
        self.transition_hook: Callable[[Key, str, str, str], None] | None = None
        self.run_counter = 0
        self._out: list[Instruction] = []
        self._stimulus = ""
        self._now = 0.0

    # ------------------------------------------------------------------ driver

    def _transitions(self, recs: Recs) -> None:
        """Carry out recommendations (and those they produce) until none remain."""
        while recs:
            ts, finish = recs.popitem()
            self._transition(ts, finish, recs)

    def _transition(self, ts: TaskState, finish: str, recs: Recs, **kwargs: Any) -> None:
        start = ts.state
        if start == finish or start == "forgotten":
            return
        fn = TRANSITIONS.get((start, finish))
        if fn is None:
            if (
                start == "released"
                or finish == "released"
                or (start, "released") not in TRANSITIONS
            ):
                raise InvalidTransition(f"{ts.key!r}: {start} -> {finish}")
            self._transition(ts, "released", recs)
            if ts.state != "released":
                return
            recs.pop(ts, None)
            start = "released"
            fn = TRANSITIONS.get((start, finish))
            if fn is None:
                raise InvalidTransition(f"{ts.key!r}: released -> {finish}")
        fn(self, ts, recs, **kwargs)
        if ts.state != start:
            self.transition_counter += 1
            states = ts.group.states
            states[start] -= 1
            states[ts.state] += 1
            self.transition_log.append(ts.key, start, ts.state, self._stimulus, self._now)
            if self.transition_hook is not None:
                self.transition_hook(ts.key, start, ts.state, self._stimulus)

    # ----------------------------------------------------------- bookkeeping

    def _group_of(self, key: Key) -> TaskGroup:
        """The task group ``key`` belongs to, made (with its prefix) on first use."""
        pname, gname = prefix_and_group(key)
        group = self.task_groups.get(gname)
        if group is None:
            prefix = self.task_prefixes.get(pname)
            if prefix is None:
                prefix = self._new_prefix(pname)
            elif prefix.ngroups == 0:
                self.empty_prefixes.pop(pname, None)
            prefix.ngroups += 1
            group = TaskGroup(gname, prefix)
            self.task_groups[gname] = group
        return group

    def _new_prefix(self, name: str) -> TaskPrefix:
        """A prefix seen for the first time (or again after it was forgotten)."""
        remembered = self.prefix_memory.recall(name)
        default = self.default_task_durations.get(name)
        prefix = TaskPrefix(name, remembered if remembered is not None else default)
        self.task_prefixes[name] = prefix
        return prefix

    def _new_task(self, key: Key, run_spec: Any, group: TaskGroup | None = None) -> TaskState:
        """A new task in ``released``; ``group`` when the caller knows it already."""
        if group is None:
            group = self._group_of(key)
        group.ntasks += 1
        group.states["released"] += 1
        ts = self.task_type(key, run_spec, group)
        self.tasks[key] = ts
        return ts

    def _expected_duration(self, ts: TaskState) -> float:
        avg = ts.prefix.duration_average
        return self.unknown_task_duration if avg is None else avg

    def _slots(self, ws: WorkerInfo) -> int:
        if math.isinf(self.worker_saturation):
            return 1 << 30
        return max(math.ceil(ws.nthreads * self.worker_saturation), 1)

    def _has_room(self, ws: WorkerInfo) -> bool:
        """Whether ``ws`` may take another queued root-ish task.

        Up to ``ceil(nthreads * worker_saturation)`` tasks; beyond that only while the
        expected work already sent stays under ``pipeline_seconds`` per thread, so that
        tiny tasks keep a worker busy across a network round trip, and never more than
        ``max_pipeline`` tasks per thread.
        """
        n = len(ws.processing) - len(ws.long_running)
        if n < self._slots(ws):
            return True
        return (
            n < ws.nthreads * self.max_pipeline
            and ws.occupancy < ws.nthreads * self.pipeline_seconds
        )

    def _update_worker_sets(self, ws: WorkerInfo) -> None:
        address = ws.address
        if address not in self.workers or ws.status != "running":
            return  # removed, or retiring: out of every placement set
        n = len(ws.processing) - len(ws.long_running)
        if n < ws.nthreads:
            self.idle[address] = ws
        else:
            self.idle.pop(address, None)
        if n > ws.nthreads:
            self.saturated.add(ws)
        else:
            self.saturated.discard(ws)
        if self._has_room(ws):
            self.open_slots[address] = ws
        else:
            self.open_slots.pop(address, None)

    def _add_replica(self, ts: TaskState, ws: WorkerInfo, nbytes: int) -> None:
        if ws in ts.who_has:
            return
        if nbytes >= 0 and not ts.who_has:
            ts.nbytes = nbytes
        if ts.who_has is EMPTY:
            ts.who_has = {ws}
        else:
            ts.who_has.add(ws)
        ws.has_what.add(ts)
        ws.nbytes += max(ts.nbytes, 0)

    def _remove_replica(self, ts: TaskState, ws: WorkerInfo) -> None:
        if ws not in ts.who_has:
            return
        discard_from(ts, "who_has", ws)
        ws.has_what.discard(ts)
        ws.nbytes -= max(ts.nbytes, 0)

    def _add_processing(self, ts: TaskState, ws: WorkerInfo) -> None:
        duration = self._expected_duration(ts)
        ts.state = "processing"
        ts.processing_on = ws
        rare = ts._rare
        need = None if rare is None else rare.resource_restrictions
        if need is not None:
            acquire(ws, need)
        ws.processing[ts] = duration
        self.nprocessing += 1
        ws.occupancy += duration
        self._update_worker_sets(ws)
        deps = ts.dependencies
        fid = ts.function
        blobs = None
        if fid is not None and fid not in ws.functions:
            blobs = self._blobs_for(ws, fid)
        self.run_counter += 1
        ts.run_id = run_id = self.run_counter
        self._out.append(
            ComputeTask(
                ws.address,
                ts.key,
                ts.run_spec,
                ts.priority,
                {d.key: [w.address for w in d.who_has] for d in deps} if deps else {},
                {d.key: d.nbytes for d in deps} if deps else {},
                duration,
                fid,
                blobs,
                run_id,
                bool(ts.who_wants),
                need,
            )
        )

    def _remove_processing(self, ts: TaskState) -> WorkerInfo | None:
        ws = ts.processing_on
        ts.processing_on = None
        if ws is None:
            return None
        rare = ts._rare
        if rare is not None and rare.resource_restrictions is not None:
            release(ws, rare.resource_restrictions)
        duration = ws.processing.pop(ts, None)
        if duration is not None:
            self.nprocessing -= 1
            ws.occupancy = ws.occupancy - duration if ws.processing else 0.0
        if ws.long_running:
            ws.long_running.discard(ts)
        self._update_worker_sets(ws)
        return ws

    def _report(self, ts: TaskState, clients: Iterable[ClientInfo], result: Any = None) -> None:
        """Tell ``clients`` that ``ts`` is in memory (and where) or failed (and why).

        ``result``: the serialized value a worker sent along, passed through unopened.
        """
        if ts.state == "memory":
            holders = [ws.address for ws in ts.who_has]
            for cs in clients:
                self._out.append(KeyInMemory(cs.client_id, ts.key, ts.type, holders, result))
        elif ts.state == "erred":
            blame = ts.exception_blame or ts
            for cs in clients:
                self._out.append(
                    KeyErred(
                        cs.client_id,
                        ts.key,
                        blame.exception,
                        blame.traceback,
                        blame.exception_text,
                        blame.traceback_text,
                    )
                )

    def _needed(self, ts: TaskState) -> bool:
        return bool(ts.who_wants or ts.waiters)

    def _leave_active(self, ts: TaskState, recs: Recs) -> None:
        """``ts`` no longer waits for its dependencies: drop it from their waiters."""
        for dep in ts.dependencies:
            waiters = dep.waiters
            if ts in waiters:
                waiters.discard(ts)
                if not waiters:
                    dep.waiters = EMPTY
                # never downgrade a pending "erred": a waiting task that is needed again
                # would ignore "released" and wait on its erred dependency forever
                if (
                    not waiters
                    and not dep.who_wants
                    and dep.state in RELEASABLE
                    and recs.get(dep) != "erred"
                ):
                    recs[dep] = "released"

    def _released_followup(self, ts: TaskState, recs: Recs) -> None:
        if self._needed(ts):
            recs[ts] = "waiting"
        elif not ts.dependents:
            recs[ts] = "forgotten"

    def _fill_slots(self, ws: WorkerInfo, recs: Recs) -> None:
        """Hand queued root-ish tasks to ``ws`` while it has open slots (and first the
        tasks waiting for resources that ``ws`` has free)."""
        if ws.status != "running":
            return
        if self.resource_book.waiting and ws.resources:
            self._offer_resources(ws, recs)
        queued = self.queued
        while queued and ws.address in self.open_slots:
            ts = queued.pop()
            self._transition(ts, "processing", recs, worker=ws)

    # -------------------------------------------------------------- transitions

    def _released_waiting(self, ts: TaskState, recs: Recs) -> None:
        if ts.run_spec is None:
            ts.exception_text = (
                f"LostData: every replica of scattered key {ts.key!r} was lost "
                "and it cannot be recomputed"
            )
            ts.exception_blame = ts
            self._to_erred(ts, recs)
            return
        for dep in ts.dependencies:
            if dep.state == "erred":
                ts.exception_blame = dep.exception_blame or dep
                self._to_erred(ts, recs)
                return
        ts.state = "waiting"
        nwaiting = 0
        for dep in ts.dependencies:
            if dep.waiters is EMPTY:
                dep.waiters = {ts}
            else:
                dep.waiters.add(ts)
            if dep.state != "memory":
                nwaiting += 1
                if dep.state == "released":
                    recs[dep] = "waiting"
        ts.nwaiting = nwaiting
        if not nwaiting:
            recs[ts] = "processing"

    def _released_waiting_bulk(
        self, tasks: list[TaskState], deps: tuple[TaskState, ...], recs: Recs
    ) -> bool:
        """``released -> waiting`` for new tasks that share exactly ``deps``, at once.

        It does what :meth:`_released_waiting` does task by task, for the case where all
        of them stay waiting: no dependency erred, at least one not in memory (the bulk
        ``map`` of tasks waiting on a shared result). False, and nothing done, otherwise.
        """
        nwaiting = sum(1 for dep in deps if dep.state != "memory")
        if not nwaiting or any(dep.state == "erred" for dep in deps):
            return False
        for dep in deps:
            if dep.waiters is EMPTY:
                dep.waiters = set(tasks)
            else:
                dep.waiters.update(tasks)
            if dep.state == "released":
                recs[dep] = "waiting"
        for ts in tasks:
            ts.state = "waiting"
            ts.nwaiting = nwaiting
            states = ts.group.states
            states["released"] -= 1
            states["waiting"] += 1
        self.transition_log.extend(
            [ts.key for ts in tasks], "released", "waiting", self._stimulus, self._now
        )
        self.transition_counter += len(tasks)
        hook = self.transition_hook
        if hook is not None:
            for ts in tasks:
                hook(ts.key, "released", "waiting", self._stimulus)
        return True

    def _waiting_processing(
        self, ts: TaskState, recs: Recs, worker: WorkerInfo | None = None
    ) -> None:
        ws = worker or self._decide_worker(ts)
        if ws is not None:
            self._add_processing(ts, ws)
        elif self._is_rootish(ts):
            ts.state = "queued"
            self.queued.add(ts)
        else:
            self._to_no_worker(ts)

    def _queued_processing(
        self, ts: TaskState, recs: Recs, worker: WorkerInfo | None = None
    ) -> None:
        ws = worker or self._decide_rootish()
        if ws is None:
            self.queued.add(ts)
            return
        self.queued.discard(ts)
        self._add_processing(ts, ws)

    def _no_worker_processing(
        self, ts: TaskState, recs: Recs, worker: WorkerInfo | None = None
    ) -> None:
        ws = worker or self._decide_worker(ts)
        if ws is None:
            return
        self._leave_no_worker(ts)
        self._add_processing(ts, ws)

    def _processing_memory(
        self,
        ts: TaskState,
        recs: Recs,
        worker: WorkerInfo,
        nbytes: int = -1,
        type: str | None = None,
        duration: float | None = None,
        result: Any = None,
    ) -> None:
        ws = self._remove_processing(ts)
        if duration is not None:
            ts.prefix.add_duration(duration)
        ts.state = "memory"
        ts.type = type
        self._add_replica(ts, worker, nbytes)
        self._on_memory(ts, recs, result)
        if ws is not None:
            self._fill_slots(ws, recs)

    def _released_memory(
        self, ts: TaskState, recs: Recs, workers: list[WorkerInfo], nbytes: int = -1
    ) -> None:
        ts.state = "memory"
        for ws in workers:
            self._add_replica(ts, ws, nbytes)
        self._on_memory(ts, recs)

    def _on_memory(self, ts: TaskState, recs: Recs, result: Any = None) -> None:
        # every dependency of a waiting task that is not in memory is counted in nwaiting
        for dts in ts.dependents:
            if dts.state == "waiting":
                dts.nwaiting -= 1
                if not dts.nwaiting:
                    recs[dts] = "processing"
        self._leave_active(ts, recs)
        self._report(ts, ts.who_wants, result)
        if not self._needed(ts):
            recs[ts] = "released"

    def _processing_erred(
        self,
        ts: TaskState,
        recs: Recs,
        worker: str | None = None,
        exception: Any = None,
        traceback: Any = None,
        exception_text: str = "",
        traceback_text: str = "",
    ) -> None:
        ws = self._remove_processing(ts)
        if worker is not None:
            add_to(ts, "erred_on", worker)
        ts.exception = exception
        ts.traceback = traceback
        ts.exception_text = exception_text
        ts.traceback_text = traceback_text
        ts.exception_blame = ts
        self._to_erred(ts, recs)
        if ws is not None:
            self._fill_slots(ws, recs)

    def _active_erred(self, ts: TaskState, recs: Recs) -> None:
        """waiting/queued/no-worker/released -> erred: a dependency failed."""
        self.queued.discard(ts)
        self._leave_no_worker(ts)
        self._to_erred(ts, recs)

    def _to_erred(self, ts: TaskState, recs: Recs) -> None:
        ts.state = "erred"
        ts.nwaiting = 0
        self._leave_active(ts, recs)
        blame = ts.exception_blame or ts
        for dts in ts.dependents:
            if dts.state in ACTIVE:
                dts.exception_blame = blame
                recs[dts] = "erred"
        self._report(ts, ts.who_wants)

    def _active_released(self, ts: TaskState, recs: Recs, force: bool = False) -> None:
        """waiting/queued/no-worker/processing -> released."""
        if not force and self._needed(ts):
            return
        state = ts.state
        ws = None
        if state == "queued":
            self.queued.discard(ts)
        elif state == "no-worker":
            self._leave_no_worker(ts)
        elif state == "processing":
            ws = self._remove_processing(ts)
            if ws is not None and ws.address in self.workers:
                self._out.append(FreeKeys(ws.address, [ts.key]))
        ts.state = "released"
        ts.nwaiting = 0
        self._leave_active(ts, recs)
        if ws is not None and ws.address in self.workers:
            self._fill_slots(ws, recs)
        self._released_followup(ts, recs)

    def _memory_released(
        self, ts: TaskState, recs: Recs, force: bool = False, lost: bool = False
    ) -> None:
        if not force and self._needed(ts):
            return
        for ws in list(ts.who_has):
            self._remove_replica(ts, ws)
            if ws.address in self.workers:
                self._out.append(FreeKeys(ws.address, [ts.key]))
        ts.state = "released"
        if lost:
            for cs in ts.who_wants:
                self._out.append(LostData(cs.client_id, ts.key))
        for dts in list(ts.dependents):
            if dts.state == "waiting":
                dts.nwaiting += 1
            elif dts.state in ("processing", "queued", "no-worker"):
                self._transition(dts, "released", recs, force=True)
        self._released_followup(ts, recs)

    def _free_erred_on(self, ts: TaskState) -> None:
        """Tell the workers where ``ts`` failed to drop it (and what it kept there)."""
        for address in sorted(ts.erred_on):
            if address in self.workers:
                self._out.append(FreeKeys(address, [ts.key]))
        ts.erred_on = EMPTY

    def _erred_released(self, ts: TaskState, recs: Recs, force: bool = False) -> None:
        self._free_erred_on(ts)
        ts.state = "released"
        ts.exception = ts.traceback = ts.exception_blame = None
        ts.exception_text = ts.traceback_text = ""
        self._released_followup(ts, recs)

    def _released_erred(self, ts: TaskState, recs: Recs) -> None:
        self._to_erred(ts, recs)

    def _forget(self, ts: TaskState, recs: Recs) -> None:
        if ts.who_wants or ts.waiters or ts.dependents:
            return
        for dep in ts.dependencies:
            discard_from(dep, "dependents", ts)
            discard_from(dep, "waiters", ts)
            if dep.who_wants or dep.waiters:
                continue
            if not dep.dependents and dep.state in ("released", "erred", "memory"):
                recs[dep] = "forgotten"
            elif dep.state == "memory" or dep.state in ACTIVE:
                recs[dep] = "released"
        ts.dependencies = ()
        if ts.function is not None:
            self._unref_blob(ts.function)
        del self.tasks[ts.key]
        group = ts.group
        group.ntasks -= 1
        if group.ntasks == 0:
            self._drop_group(group)
        ts.state = "forgotten"

    def _drop_group(self, group: TaskGroup) -> None:
        """``group`` has no task left: forget it, and the links other groups have to it
        (O(its links), each made once: no scan of every group)."""
        del self.task_groups[group.name]
        prefix = group.prefix
        prefix.ngroups -= 1
        if prefix.ngroups == 0:
            self.empty_prefixes[prefix.name] = self._now
        for g in group.dependents:
            g.dependencies.discard(group)
        for g in group.dependencies:
            g.dependents.discard(group)
        group.dependents = set()

    def _blobs_for(self, ws: WorkerInfo, fid: str) -> dict[str, Any]:
        """The bytes of shared blob ``fid`` and those it requires, that ``ws`` lacks;
        from now on ``ws`` counts as having them."""
        out: dict[str, Any] = {}
        bid: str | None = fid
        while bid is not None and bid not in ws.functions:
            ws.functions.add(bid)
            blob = self.functions[bid]
            blob.holders[ws.address] = ws
            out[bid] = blob.data
            bid = blob.requires
        return out

    def _unref_blob(self, fid: str) -> None:
        """One user fewer for shared blob ``fid``; the last one gone, drop it (and so on
        along the blobs it requires)."""
        bid: str | None = fid
        while bid is not None:
            blob = self.functions[bid]
            blob.refs -= 1
            if blob.refs > 0:
                return
            self._drop_function(bid)
            bid = blob.requires

    def _drop_function(self, fid: str) -> None:
        """No task uses shared blob ``fid`` any more: forget it here and on the workers
        it was sent to (those of ``blob.holders`` still connected: O(sends), not a scan
        of every worker)."""
        blob = self.functions.pop(fid)
        workers = self.workers
        for address, ws in blob.holders.items():
            if workers.get(address) is ws and fid in ws.functions:
                ws.functions.discard(fid)
                self._out.append(FreeFunctions(address, [fid]))
        blob.holders = {}

    def _released_forgotten(self, ts: TaskState, recs: Recs) -> None:
        self._forget(ts, recs)

    def _erred_forgotten(self, ts: TaskState, recs: Recs) -> None:
        self._forget(ts, recs)
        if ts.state == "forgotten":
            self._free_erred_on(ts)


_Fn = Callable[..., None]

#: The legal transitions. Any other pair is routed through ``released``.
TRANSITIONS: dict[tuple[str, str], _Fn] = {
    ("released", "waiting"): SchedulerTransitions._released_waiting,
    ("released", "memory"): SchedulerTransitions._released_memory,
    ("released", "erred"): SchedulerTransitions._released_erred,
    ("released", "forgotten"): SchedulerTransitions._released_forgotten,
    ("waiting", "processing"): SchedulerTransitions._waiting_processing,
    ("waiting", "released"): SchedulerTransitions._active_released,
    ("waiting", "erred"): SchedulerTransitions._active_erred,
    ("queued", "processing"): SchedulerTransitions._queued_processing,
    ("queued", "released"): SchedulerTransitions._active_released,
    ("queued", "erred"): SchedulerTransitions._active_erred,
    ("no-worker", "processing"): SchedulerTransitions._no_worker_processing,
    ("no-worker", "released"): SchedulerTransitions._active_released,
    ("no-worker", "erred"): SchedulerTransitions._active_erred,
    ("processing", "memory"): SchedulerTransitions._processing_memory,
    ("processing", "erred"): SchedulerTransitions._processing_erred,
    ("processing", "released"): SchedulerTransitions._active_released,
    ("memory", "released"): SchedulerTransitions._memory_released,
    ("erred", "released"): SchedulerTransitions._erred_released,
    ("erred", "forgotten"): SchedulerTransitions._erred_forgotten,
}
