"""The worker's state machine: ``WorkerState.handle(event) -> list[WorkerInstruction]``.

Theory of operation
-------------------
The scheduler sends *compute* requests (a key, its opaque run spec, and where each
dependency lives) and *free* requests. A task to compute is ``waiting`` until every
dependency is in local ``memory``, then ``ready`` (a priority queue), then ``executing``
on one of ``nthreads`` threads, then ``memory`` or ``error``. A dependency held elsewhere
is ``fetch`` (queued per peer worker), ``flight`` (a transfer is under way), or
``missing`` (no known holder; the scheduler will say where it went or reschedule).
A ready task that needs resources (``{"GPU": 1}``) waits in ``constrained`` rather than
``ready`` and starts only once its amounts are available; it holds them from the moment
it is handed to a thread until its outcome comes back, so a worker with ``GPU=1`` never
runs two such tasks at once, however many threads it has.
A task that calls ``secede()`` (to wait on other tasks) becomes ``long-running``: it
still runs, on a thread of its own, but no longer counts against ``nthreads``, so
another task may start; the scheduler is told. ``rejoin()`` asks for a slot back:
waiting rejoins take free slots before any ready task, and the task is ``executing``
again (it keeps any resources it held throughout).
A task freed while it executes or travels is ``cancelled``: its thread or transfer is
allowed to finish and the result is dropped, unless a new compute request arrives
first, which resumes it.

The shell owns the data: it stores results and fetched values and tells the state
machine their sizes; the state machine tells it what to run, fetch and delete.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from conveyor.core import worker_events as we
from conveyor.core.heapset import HeapSet
from conveyor.core.types import Key, Priority

_ACTIVE = frozenset({"waiting", "ready", "executing", "long-running"})

T = TypeVar("T")

#: The shared empty set of a task that has none of some kind: most tasks have no
#: dependencies, dependents or known holders. Four empty sets per task cost 864 bytes
#: (over 800 MB for a million results held in memory), and every full garbage collection
#: would walk them all. A set is made when its first element arrives.
_NONE: frozenset[Any] = frozenset()


def _grown(items: set[T] | frozenset[T]) -> set[T]:
    """``items`` itself if it is a set of its own, else a new empty one to fill."""
    return items if type(items) is set else set()


def _without(items: set[T] | frozenset[T], item: T) -> set[T] | frozenset[T]:
    """``items`` without ``item``: the same set, or the shared empty one once it empties."""
    if type(items) is set:
        items.discard(item)
        if items:
            return items
    return _NONE


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


class WorkerState:
    """Everything a worker knows about its tasks, and the rules for changing it."""

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
        self.data_needed: dict[str, HeapSet[WTask]] = {}
        self.in_flight_workers: dict[str, list[Key]] = {}
        self.missing: set[WTask] = set()
        self.log: deque[tuple[Key, str, str, float]] = deque(maxlen=log_length)
        self._out: list[we.WorkerInstruction] = []
        self._now = 0.0
        self._handlers: dict[type, Callable[[Any], None]] = {
            we.ComputeTaskEvent: self._compute_task,
            we.FreeKeysEvent: self._free_keys,
            we.RefreshWhoHasEvent: self._refresh_who_has,
            we.ExecuteSuccess: self._execute_success,
            we.ExecuteFailure: self._execute_failure,
            we.GatherDepDone: self._gather_dep_done,
            we.UpdateDataEvent: self._update_data,
            we.AcquireReplicasEvent: self._acquire_replicas,
            we.SecedeEvent: self._secede,
            we.RejoinEvent: self._rejoin,
        }

    # ------------------------------------------------------------------ entry

    def handle(self, event: we.WorkerEvent) -> list[we.WorkerInstruction]:
        """Apply one event; return the instructions it produced, in order."""
        self._now = event.now
        self._handlers[type(event)](event)
        self._ensure_communicating()
        self._ensure_computing()
        out, self._out = self._out, []
        if self.validate_state:
            self.validate()
        return out

    def story(self, key: Key) -> list[tuple[Key, str, str, float]]:
        """Logged state changes of ``key`` on this worker."""
        return [e for e in self.log if e[0] == key]

    # ------------------------------------------------------------- helpers

    def _set_state(self, ts: WTask, state: str) -> None:
        self.log.append((ts.key, ts.state, state, self._now))
        ts.state = state

    def _task(self, key: Key) -> WTask:
        ts = self.tasks.get(key)
        if ts is None:
            ts = self.tasks[key] = self.task_type(key)
        return ts

    def _to_fetch_or_missing(self, ts: WTask) -> None:
        ts.who_has = _without(ts.who_has, self.address)
        if ts.who_has:
            self._set_state(ts, "fetch")
            for worker in ts.who_has:
                heap = self.data_needed.get(worker)
                if heap is None:
                    heap = self.data_needed[worker] = HeapSet()
                heap.add(ts)
        else:
            self._set_state(ts, "missing")
            self.missing.add(ts)

    def _leave_fetch(self, ts: WTask) -> None:
        for worker in ts.who_has:
            heap = self.data_needed.get(worker)
            if heap is not None:
                heap.discard(ts)
                if not heap:
                    del self.data_needed[worker]

    def _put_in_memory(self, ts: WTask, nbytes: int) -> None:
        self._set_state(ts, "memory")
        ts.nbytes = nbytes
        for dts in ts.dependents:
            if ts in dts.waiting_for_data:
                dts.waiting_for_data = _without(dts.waiting_for_data, ts)
                if not dts.waiting_for_data and dts.state == "waiting":
                    self._set_state(dts, "ready")
                    self._queue_ready(dts)

    def _has_active_dependents(self, ts: WTask) -> bool:
        return any(d.state in _ACTIVE for d in ts.dependents)

    def _release(self, ts: WTask) -> None:
        """Drop ``ts`` and whatever it alone kept here."""
        state = ts.state
        if state == "memory":
            self._out.append(we.DeleteData([ts.key]))
        elif state == "ready":
            self.ready.discard(ts)
            self.constrained.discard(ts)
        elif state == "fetch":
            self._leave_fetch(ts)
        elif state == "missing":
            self.missing.discard(ts)
        self._set_state(ts, "released")
        if self.task_resources:
            self.task_resources.pop(ts, None)
        ts.run_spec = None
        ts.computed = ts.freed = False
        ts.waiting_for_data = _NONE
        deps, ts.dependencies = ts.dependencies, _NONE
        for dep in deps:
            dep.dependents = _without(dep.dependents, ts)
            self._maybe_drop(dep)
        if not ts.dependents:
            del self.tasks[ts.key]
            self._set_state(ts, "forgotten")

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
            self._set_state(dep, "cancelled")

    def _finished_running(self, ts: WTask) -> None:
        for dep in ts.dependencies:
            if dep.freed:
                self._maybe_drop(dep)

    # ---------------------------------------------------------------- events

    def _compute_task(self, e: we.ComputeTaskEvent) -> None:
        ts = self._task(e.key)
        state = ts.state
        ts.priority = e.priority
        ts.duration = e.duration
        ts.run_id = e.run_id
        ts.inline = e.inline
        ts.computed = True
        ts.freed = False
        if state == "memory":
            self._out.append(we.TaskFinishedMsg(ts.key, ts.nbytes, ts.type, 0.0, 0.0, ts.run_id))
            return
        if state in ("executing", "long-running", "waiting", "ready"):
            return
        if state == "cancelled" and ts.coming_from is None:
            self._set_state(ts, "executing")
            return
        if state in ("flight", "cancelled"):
            # A transfer of the key is under way: let it finish. Should it bring nothing,
            # _gather_dep_done computes the key instead, so remember how.
            if state == "cancelled":
                self._set_state(ts, "flight")
            ts.run_spec = e.run_spec
            if e.resources:
                self.task_resources[ts] = e.resources
            self._add_dependencies(ts, e)
            return
        if e.resources and self._refuse_resources(ts, e.resources):
            return
        if state == "fetch":
            self._leave_fetch(ts)
        elif state == "missing":
            self.missing.discard(ts)
        ts.run_spec = e.run_spec
        if e.resources:
            self.task_resources[ts] = e.resources
        self._add_dependencies(ts, e)
        self._to_compute(ts)

    def _add_dependencies(self, ts: WTask, e: we.ComputeTaskEvent) -> None:
        for dkey, addresses in e.who_has.items():
            dts = self._task(dkey)
            deps = ts.dependencies = _grown(ts.dependencies)
            deps.add(dts)
            dependents = dts.dependents = _grown(dts.dependents)
            dependents.add(ts)
            if dts.state == "memory":
                continue
            waiting = ts.waiting_for_data = _grown(ts.waiting_for_data)
            waiting.add(dts)
            dts.nbytes = e.nbytes.get(dkey, dts.nbytes)
            if dts.state == "released":
                dts.who_has = set(addresses)
                dts.priority = ts.priority
                self._to_fetch_or_missing(dts)
            elif dts.state == "missing":
                # the scheduler knows newer holders than the ones that failed us
                self.missing.discard(dts)
                dts.who_has = set(addresses)
                self._to_fetch_or_missing(dts)
            elif dts.state == "cancelled":
                self._set_state(dts, "flight" if dts.coming_from is not None else "executing")

    def _to_compute(self, ts: WTask) -> None:
        if ts.waiting_for_data:
            self._set_state(ts, "waiting")
        else:
            self._set_state(ts, "ready")
            self._queue_ready(ts)

    def _queue_ready(self, ts: WTask) -> None:
        """Queue a ready task: in ``constrained`` if it needs resources."""
        if self.task_resources and ts in self.task_resources:
            self.constrained.add(ts)
        else:
            self.ready.add(ts)

    def _refuse_resources(self, ts: WTask, need: dict[str, float]) -> bool:
        """Fail ``ts`` at once if this worker could never give it ``need``."""
        total = self.total_resources
        short = [n for n, amount in need.items() if total.get(n, 0.0) < amount]
        if not short:
            return False
        wanted = ", ".join(f"{n}={need[n]:g} (this worker has {total.get(n, 0):g})" for n in short)
        self._out.append(
            we.TaskErredMsg(
                ts.key,
                None,
                None,
                f"InsufficientResources: task {ts.key!r} needs {wanted}",
                "",
                0.0,
                0.0,
                ts.run_id,
            )
        )
        if ts.state == "released" and not ts.dependents:
            del self.tasks[ts.key]
            self._set_state(ts, "forgotten")
        return True

    def _release_held(self, key: Key) -> None:
        """The task ``key`` stopped executing: its resources are available again."""
        need = self.held_resources.pop(key, None)
        if need is not None:
            available = self.available_resources
            for name, amount in need.items():
                available[name] = available.get(name, 0.0) + amount

    def _free_keys(self, e: we.FreeKeysEvent) -> None:
        for key in e.keys:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            ts.computed = False
            state = ts.state
            if state in ("executing", "flight"):
                self._set_state(ts, "cancelled")
            elif state == "long-running":
                # still running: counted as executing again, so that resuming it (a new
                # compute request) finds it where an executing task would be
                self.long_running.discard(key)
                self.executing_keys.add(key)
                self._set_state(ts, "cancelled")
            elif state == "memory" and self._has_active_dependents(ts):
                ts.freed = True
            elif state != "cancelled":
                self._release(ts)

    def _refresh_who_has(self, e: we.RefreshWhoHasEvent) -> None:
        for key, addresses in e.who_has.items():
            ts = self.tasks.get(key)
            if ts is None or ts.state not in ("fetch", "missing"):
                continue
            if ts.state == "fetch":
                self._leave_fetch(ts)
            else:
                self.missing.discard(ts)
            ts.who_has = set(addresses)
            self._to_fetch_or_missing(ts)

    def _update_data(self, e: we.UpdateDataEvent) -> None:
        for key, nbytes in e.data.items():
            ts = self._task(key)
            if ts.state in ("fetch", "missing"):
                self._leave_fetch(ts)
                self.missing.discard(ts)
            ts.computed = True
            if ts.state == "memory":
                ts.nbytes = nbytes
            elif ts.state in ("released", "fetch", "missing"):
                self._put_in_memory(ts, nbytes)

    def _acquire_replicas(self, e: we.AcquireReplicasEvent) -> None:
        # A copy nothing here needs: not ``computed`` and without dependents. It is
        # reported with AddKeysMsg when it lands, and dropped if it cannot be had.
        have: dict[Key, int] = {}
        for key, addresses in e.who_has.items():
            ts = self._task(key)
            if ts.state == "memory":
                have[key] = ts.nbytes  # the scheduler may not know of this copy yet
                continue
            if ts.state != "released":
                continue  # on its way here already, or being computed here
            ts.who_has = set(addresses)
            ts.nbytes = e.nbytes.get(key, ts.nbytes)
            self._to_fetch_or_missing(ts)
            self._drop_unwanted_copy(ts)
        if have:
            self._out.append(we.AddKeysMsg(have))

    def _drop_unwanted_copy(self, ts: WTask) -> None:
        """A requested copy with no holder left to fetch it from is given up."""
        if ts.state == "missing" and not ts.dependents and not ts.computed:
            self._release(ts)

    def _execute_success(self, e: we.ExecuteSuccess) -> None:
        self.executing_keys.discard(e.key)
        self.long_running.discard(e.key)
        if self.held_resources:
            self._release_held(e.key)
        ts = self.tasks.get(e.key)
        if ts is None:
            self._out.append(we.DeleteData([e.key]))
            return
        if ts.state in ("executing", "long-running"):
            ts.type = e.type
            ts.run_spec = None  # the result is here: a new request would bring its own
            self._put_in_memory(ts, e.nbytes)
            self._out.append(
                we.TaskFinishedMsg(ts.key, e.nbytes, e.type, e.start, e.stop, ts.run_id)
            )
            self._finished_running(ts)
        elif ts.state == "cancelled":
            self._set_state(ts, "memory")
            self._release(ts)

    def _execute_failure(self, e: we.ExecuteFailure) -> None:
        self.executing_keys.discard(e.key)
        self.long_running.discard(e.key)
        if self.held_resources:
            self._release_held(e.key)
        ts = self.tasks.get(e.key)
        if ts is None:
            return
        if ts.state in ("executing", "long-running"):
            self._set_state(ts, "error")
            ts.run_spec = None
            self._out.append(
                we.TaskErredMsg(
                    ts.key,
                    e.exception,
                    e.traceback,
                    e.exception_text,
                    e.traceback_text,
                    e.start,
                    e.stop,
                    ts.run_id,
                )
            )
            self._finished_running(ts)
        elif ts.state == "cancelled":
            self._release(ts)

    def _gather_dep_done(self, e: we.GatherDepDone) -> None:
        keys = self.in_flight_workers.pop(e.worker, [])
        added: dict[Key, int] = {}
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None or ts.coming_from != e.worker:
                continue
            ts.coming_from = None
            if ts.state == "cancelled":
                if key in e.received:
                    self._set_state(ts, "memory")
                self._release(ts)
            elif ts.state != "flight":
                continue
            elif key in e.received:
                self._put_in_memory(ts, e.received[key])
                if ts.computed:
                    self._out.append(
                        we.TaskFinishedMsg(key, ts.nbytes, ts.type, 0.0, 0.0, ts.run_id)
                    )
                else:
                    added[key] = ts.nbytes
            else:
                ts.who_has = _without(ts.who_has, e.worker)
                if ts.computed and ts.run_spec is not None:
                    # asked to compute the key while it travelled: compute it after all
                    self._to_compute(ts)
                    continue
                self._out.append(we.MissingDataMsg(key, e.worker))
                self._to_fetch_or_missing(ts)
                self._drop_unwanted_copy(ts)
        if added:
            self._out.append(we.AddKeysMsg(added))
        if e.failed:
            heap = self.data_needed.pop(e.worker, None)
            for ts in list(heap or ()):
                ts.who_has = _without(ts.who_has, e.worker)
                if not ts.who_has:
                    self._leave_fetch(ts)
                    self._out.append(we.MissingDataMsg(ts.key, e.worker))
                    self._to_fetch_or_missing(ts)
                    self._drop_unwanted_copy(ts)

    def _secede(self, e: we.SecedeEvent) -> None:
        ts = self.tasks.get(e.key)
        if ts is None or ts.state != "executing":
            return  # cancelled meanwhile, or done: nothing to free
        self.executing_keys.discard(e.key)
        self.long_running.add(e.key)
        self._set_state(ts, "long-running")
        self._out.append(we.LongRunningMsg(ts.key, ts.run_id))

    def _rejoin(self, e: we.RejoinEvent) -> None:
        ts = self.tasks.get(e.key)
        if ts is None or ts.state != "long-running":
            # freed (it counts as executing again) or gone: nothing to wait for
            self._out.append(we.Rejoined(e.key))
            return
        self.rejoining.append(e.key)

    def _grant_rejoins(self) -> None:
        """Seceded tasks asking to rejoin take free slots before any ready task."""
        while self.rejoining and len(self.executing_keys) < self.nthreads:
            key = self.rejoining.popleft()
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "long-running":
                self.long_running.discard(key)
                self.executing_keys.add(key)
                self._set_state(ts, "executing")
            self._out.append(we.Rejoined(key))

    # -------------------------------------------------------------- dispatch

    def _ensure_computing(self) -> None:
        """Start ready tasks on free threads.

        Short tasks (expected under ``prefetch_seconds``) may be handed to the threads
        ahead of time, up to ``prefetch_per_thread`` per thread: a thread that finishes
        one starts the next at once instead of waiting for the event loop, and the loop
        then handles completions (and sends their messages) in batches rather than one
        round of wake-ups per task.
        """
        if self.rejoining:
            self._grant_rejoins()
            if self.rejoining:
                return  # slots go to the tasks waiting to rejoin first
        ready = self.ready
        executing = self.executing_keys
        nthreads = self.nthreads
        most = nthreads * max(self.prefetch_per_thread, 1)
        if self.constrained:
            self._ensure_computing_constrained(most)
            return
        while ready:
            n = len(executing)
            if n >= nthreads and (n >= most or ready.peek().duration >= self.prefetch_seconds):
                break
            ts = ready.pop()
            self._set_state(ts, "executing")
            executing.add(ts.key)
            self._out.append(we.Execute(ts.key))

    def _ensure_computing_constrained(self, most: int) -> None:
        """``_ensure_computing`` while tasks needing resources are ready: the first of
        ``constrained`` competes (by priority) with the first of ``ready`` when its
        resources are available, and waits otherwise."""
        ready, constrained, executing = self.ready, self.constrained, self.executing_keys
        available = self.available_resources
        while ready or constrained:
            ts: WTask | None = None
            need: dict[str, float] | None = None
            if constrained:
                head = constrained.peek()
                wants = self.task_resources[head]
                if all(available.get(n, 0.0) >= a - 1e-9 for n, a in wants.items()) and (
                    not ready or head.priority <= ready.peek().priority
                ):
                    ts, need = head, wants
            if ts is None:
                if not ready:
                    break
                ts = ready.peek()
            n = len(executing)
            if n >= self.nthreads and (n >= most or ts.duration >= self.prefetch_seconds):
                break
            if need is None:
                ready.pop()
            else:
                constrained.pop()
                del self.task_resources[ts]
                for name, amount in need.items():
                    available[name] = available.get(name, 0.0) - amount
                self.held_resources[ts.key] = need
            self._set_state(ts, "executing")
            executing.add(ts.key)
            self._out.append(we.Execute(ts.key))

    def _ensure_communicating(self) -> None:
        if not self.data_needed:
            return
        for worker in list(self.data_needed):
            if len(self.in_flight_workers) >= self.outgoing_connections:
                return
            if worker in self.in_flight_workers:
                continue
            heap = self.data_needed.get(worker)
            if heap is None:
                continue
            keys: list[Key] = []
            total = 0
            while heap:
                ts = heap.peek()
                size = max(ts.nbytes, 0)
                if keys and total + size > self.transfer_message_bytes_limit:
                    break
                self._leave_fetch(ts)
                self._set_state(ts, "flight")
                ts.coming_from = worker
                keys.append(ts.key)
                total += size
            if keys:
                self.in_flight_workers[worker] = keys
                self._out.append(we.GatherDep(worker, keys, total))

    # ------------------------------------------------------------- checking

    def validate(self) -> None:
        """Raise AssertionError if an invariant is broken."""
        for key, ts in self.tasks.items():
            assert ts.key == key, ts
            state = ts.state
            assert (state == "ready") == (ts in self.ready or ts in self.constrained), ts
            assert not (ts in self.ready and ts in self.constrained), ts
            if ts in self.constrained:
                assert ts in self.task_resources, ts
            assert (state == "missing") == (ts in self.missing), ts
            if state == "executing":
                assert key in self.executing_keys, ts
            assert (state == "long-running") == (key in self.long_running), ts
            if state == "fetch":
                assert any(ts in self.data_needed.get(w, ()) for w in ts.who_has), ts
            if state == "flight":
                assert ts.coming_from in self.in_flight_workers, ts
            if state == "waiting":
                assert ts.waiting_for_data, ts
                assert all(d.state != "memory" for d in ts.waiting_for_data), ts
            for dep in ts.dependencies:
                assert ts in dep.dependents, (ts, dep)
                assert dep.key in self.tasks, (ts, dep)
        for heap in self.data_needed.values():
            assert heap, "empty fetch queue kept"
            for ts in heap:
                assert ts.state == "fetch", ts
        assert len(self.executing_keys) <= self.nthreads * max(self.prefetch_per_thread, 1)
        # a seceded task keeps what it holds: it still runs
        assert set(self.held_resources) <= self.executing_keys | self.long_running
        assert not self.executing_keys & self.long_running
        for name, total in self.total_resources.items():
            held = sum(need.get(name, 0.0) for need in self.held_resources.values())
            assert abs(self.available_resources.get(name, 0.0) + held - total) < 1e-6, name
            assert self.available_resources.get(name, 0.0) >= -1e-9, name
