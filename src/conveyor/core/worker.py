"""The worker's state machine: ``WorkerState.handle(event) -> list[WorkerInstruction]``.

Theory of operation
-------------------
The scheduler sends *compute* requests (a key, its opaque run spec, and where each
dependency lives) and *free* requests; the shell reports what its threads and transfers
did. Each task is in one state, and moves only along the arrows below, which are the
entries of the table :data:`~conveyor.core.worker_transitions.TRANSITIONS`. The event
handlers here decide where a task goes and call ``_transition(ts, finish)``; the
function the table holds for the pair does the bookkeeping (queues, thread and resource
counts, transfers) and emits the instructions, and every move is logged (:meth:`story`).
No handler sets ``ts.state``, and a move the table lacks raises
``InvalidWorkerTransition`` before anything changes.

A task computed here::

    released, error, fetch, missing, flight -> waiting -> ready -> executing
    released, error, fetch, missing, flight -> ready
    executing -> memory | error | long-running
    long-running -> executing | memory | error

It is ``waiting`` until every dependency is in local ``memory``, then ``ready`` (a
priority queue), then ``executing`` on one of ``nthreads`` threads. A ready task that
needs resources (``{"GPU": 1}``) queues in ``constrained`` rather than ``ready`` (its state
is still ``ready``) and starts only once its amounts are available; it holds them from
the moment it is handed to a thread until its outcome comes back, so a worker with
``GPU=1`` never runs two such tasks at once, however many threads it has. A task that
calls ``secede()`` (to wait on other tasks) becomes ``long-running``: it still runs, on
a thread of its own, but no longer counts against ``nthreads``, so another task may
start; the scheduler is told. ``rejoin()`` asks for a slot back: waiting rejoins take
free slots before any ready task, and the task is ``executing`` again (it keeps any
resources it held throughout).

A dependency held elsewhere, or a copy the scheduler asked for::

    released -> fetch | missing;  missing -> fetch;  fetch -> missing | flight
    flight -> memory | fetch | missing
    released, fetch, missing -> memory          (data put here directly: scatter)

``fetch`` queues it for each peer that holds it, ``flight`` means a transfer is under
way, ``missing`` that no holder is known (the scheduler will say where it went, or
reschedule). A ``fetch`` or ``missing`` key the scheduler asks to compute here goes to
``waiting`` or ``ready``; so does a key in flight whose transfer brought nothing.

A peer serving as many transfers as it allows answers "busy" and sends nothing: its
keys go back to ``fetch`` (``flight -> fetch``), where any other holder may serve them
at once, and the peer itself sits in ``busy_workers`` until the shell reports
``RetryBusyWorkerEvent`` after the delay the ``RetryBusyWorkerLater`` instruction asked
for (doubling while it stays busy). A busy answer is not a failure: the peer keeps its
place among the holders, and the scheduler hears nothing of it.

A task freed while its thread or transfer runs is ``cancelled``::

    executing, long-running, flight -> cancelled -> executing | long-running | flight
                                                               (asked again)
    cancelled -> memory -> released    (the dropped result arrived)
    cancelled -> released              (it failed, or the transfer brought nothing)

Its thread or transfer is allowed to finish and the result is dropped, unless a new
compute request (or a new dependent) arrives first, which resumes it where it was: a
running one ``executing``, a seceded one ``long-running`` (a cancelled task that had
seceded stays outside the ``nthreads`` budget, and its rejoin waits for a slot as any
other), a transfer ``flight``.

Letting go::

    waiting, ready, memory, error, fetch, missing -> released -> forgotten

A released task is forgotten as soon as no task here depends on it. A result that a
task still to run here needs stays in ``memory``, marked ``freed``, until they are done.

The shell owns the data: it stores results and fetched values and tells the state
machine their sizes; the state machine tells it what to run, fetch and delete.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conveyor.core import worker_events as we
from conveyor.core.types import Key
from conveyor.core.worker_transitions import (
    TRANSITIONS,
    InvalidWorkerTransition,
    ReplayableWTask,
    WorkerTransitions,
    WTask,
    grown,
    without,
)

#: seconds before a peer that answered busy is asked again; doubled for each busy answer
#: in a row, up to ``BUSY_RETRY_MAX``
BUSY_RETRY_FIRST = 0.05
BUSY_RETRY_MAX = 2.0

__all__ = ["TRANSITIONS", "InvalidWorkerTransition", "ReplayableWTask", "WTask", "WorkerState"]


class WorkerState(WorkerTransitions):
    """Everything a worker knows about its tasks, and the rules for changing it."""

    # ------------------------------------------------------------------ entry

    def handle(self, event: we.WorkerEvent) -> list[we.WorkerInstruction]:
        """Apply one event; return the instructions it produced, in order.

        If handling it raises, the instructions produced so far are dropped (they must
        not go out with the next event's) and the exception propagates; the state is not
        rolled back.
        """
        self._now = event.now
        try:
            _HANDLERS[type(event)](self, event)
            if self.fetchable_peers and not self.paused:
                self._ensure_communicating()
            self._ensure_computing()
        except BaseException:
            self._out = []
            raise
        out, self._out = self._out, []
        if self.validate_state:
            self.validate()
        return out

    def story(self, key: Key) -> list[tuple[Key, str, str, float]]:
        """Logged state changes of ``key`` on this worker."""
        return [e for e in self.log if e[0] == key]

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
            self._resume(ts)  # its thread still runs (seceded or not): keep its result
            return
        if state in ("flight", "cancelled"):
            # A transfer of the key is under way: let it finish. Should it bring nothing,
            # _gather_dep_done computes the key instead, so remember how.
            if state == "cancelled":
                self._transition(ts, "flight")
            ts.run_spec = e.run_spec
            if e.resources:
                self.task_resources[ts] = e.resources
            self._add_dependencies(ts, e)
            return
        if e.resources and self._refuse_resources(ts, e.resources):
            return
        ts.run_spec = e.run_spec
        if e.resources:
            self.task_resources[ts] = e.resources
        # It waits if a dependency is not here yet. It moves before its dependencies are
        # recorded: leaving ``fetch`` empties its peers' queues before they fill again.
        if not e.who_has:
            self._transition(ts, "waiting" if ts.waiting_for_data else "ready")
            return
        tasks = self.tasks
        waits = bool(ts.waiting_for_data) or any(
            (dts := tasks.get(dkey)) is None or dts.state != "memory" for dkey in e.who_has
        )
        self._transition(ts, "waiting" if waits else "ready")
        self._add_dependencies(ts, e)

    def _add_dependencies(self, ts: WTask, e: we.ComputeTaskEvent) -> None:
        for dkey, addresses in e.who_has.items():
            dts = self._task(dkey)
            deps = ts.dependencies = grown(ts.dependencies)
            deps.add(dts)
            dependents = dts.dependents = grown(dts.dependents)
            dependents.add(ts)
            if dts.state == "memory":
                continue
            waiting = ts.waiting_for_data = grown(ts.waiting_for_data)
            waiting.add(dts)
            dts.nbytes = e.nbytes.get(dkey, dts.nbytes)
            if dts.state == "released":
                dts.priority = ts.priority
                self._find_holders(dts, set(addresses))
            elif dts.state == "missing":
                # the scheduler knows newer holders than the ones that failed us
                self._find_holders(dts, set(addresses))
            elif dts.state == "cancelled":
                self._resume(dts)

    def _resume(self, ts: WTask) -> None:
        """A ``cancelled`` task is wanted again: back to what its thread or transfer is."""
        if ts.coming_from is not None:
            self._transition(ts, "flight")
        else:
            self._transition(ts, "long-running" if ts.key in self.long_running else "executing")

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
            self._transition(ts, "forgotten")
        return True

    def _free_keys(self, e: we.FreeKeysEvent) -> None:
        for key in e.keys:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            ts.computed = False
            state = ts.state
            if state in ("executing", "long-running", "flight"):
                self._transition(ts, "cancelled")
            elif state == "memory" and self._has_active_dependents(ts):
                ts.freed = True
            elif state != "cancelled":
                self._release(ts)

    def _refresh_who_has(self, e: we.RefreshWhoHasEvent) -> None:
        for key, addresses in e.who_has.items():
            ts = self.tasks.get(key)
            if ts is not None and ts.state in ("fetch", "missing"):
                self._find_holders(ts, set(addresses))

    def _update_data(self, e: we.UpdateDataEvent) -> None:
        for key, nbytes in e.data.items():
            ts = self._task(key)
            ts.computed = True
            if ts.state == "memory":
                ts.nbytes = nbytes
            elif ts.state in ("released", "fetch", "missing"):
                self._transition(ts, "memory", nbytes)

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
            ts.nbytes = e.nbytes.get(key, ts.nbytes)
            self._find_holders(ts, set(addresses))
            self._drop_unwanted_copy(ts)
        if have:
            self._out.append(we.AddKeysMsg(have))

    def _drop_unwanted_copy(self, ts: WTask) -> None:
        """A requested copy with no holder left to fetch it from is given up."""
        if ts.state == "missing" and not ts.dependents and not ts.computed:
            self._release(ts)

    def _execute_success(self, e: we.ExecuteSuccess) -> None:
        ts = self.tasks.get(e.key)
        if ts is None:
            self._out.append(we.DeleteData([e.key]))
            return
        state = ts.state
        if state == "executing" or state == "long-running":
            self._transition(ts, "memory", e)
        elif state == "cancelled":
            self._transition(ts, "memory")
            self._release(ts)

    def _execute_failure(self, e: we.ExecuteFailure) -> None:
        ts = self.tasks.get(e.key)
        if ts is None:
            return
        if ts.state in ("executing", "long-running"):
            self._transition(ts, "error", e)
        elif ts.state == "cancelled":
            self._release(ts)

    def _gather_dep_done(self, e: we.GatherDepDone) -> None:
        keys = self.in_flight_workers.pop(e.worker, [])
        if e.busy:
            self._peer_busy(e.worker, keys)
            return
        self.busy_streak.pop(e.worker, None)
        if e.worker in self.data_needed:  # it holds more that is needed here
            self.fetchable_peers[e.worker] = None
        added: dict[Key, int] = {}
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None or ts.coming_from != e.worker:
                continue
            if ts.state == "cancelled":
                if key in e.received:
                    self._transition(ts, "memory")
                self._release(ts)
            elif ts.state != "flight":
                ts.coming_from = None
            elif key in e.received:
                self._transition(ts, "memory", e.received[key])
                if not ts.computed:
                    added[key] = ts.nbytes  # a copy: the scheduler hears of it below
            else:
                ts.who_has = without(ts.who_has, e.worker)
                if ts.computed and ts.run_spec is not None:
                    # asked to compute the key while it travelled: compute it after all
                    self._transition(ts, "waiting" if ts.waiting_for_data else "ready")
                    continue
                self._out.append(we.MissingDataMsg(key, e.worker))
                self._find_holders(ts, ts.who_has)
                self._drop_unwanted_copy(ts)
        if added:
            self._out.append(we.AddKeysMsg(added))
        if e.failed:
            self.busy_streak.pop(e.worker, None)
            heap = self.data_needed.pop(e.worker, None)
            self.fetchable_peers.pop(e.worker, None)
            for ts in list(heap or ()):
                ts.who_has = without(ts.who_has, e.worker)
                if not ts.who_has:
                    self._out.append(we.MissingDataMsg(ts.key, e.worker))
                    self._transition(ts, "missing")
                    self._drop_unwanted_copy(ts)

    def _peer_busy(self, worker: str, keys: list[Key]) -> None:
        """``worker`` sent none of ``keys``: it serves as many transfers as it allows.
        They wait in ``fetch`` again, where another holder may serve them at once; the
        busy peer is asked again after a wait that doubles while it stays busy."""
        self.busy_workers.add(worker)
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None or ts.coming_from != worker:
                continue
            if ts.state == "cancelled":
                self._release(ts)
            elif ts.state != "flight":
                ts.coming_from = None
            elif ts.computed and ts.run_spec is not None:
                # asked to compute the key while it travelled: compute it after all
                self._transition(ts, "waiting" if ts.waiting_for_data else "ready")
            else:
                self._transition(ts, "fetch")
        streak = self.busy_streak[worker] = self.busy_streak.get(worker, 0) + 1
        delay = min(BUSY_RETRY_FIRST * 2 ** min(streak - 1, 16), BUSY_RETRY_MAX)
        self._out.append(we.RetryBusyWorkerLater(worker, delay))

    def _retry_busy_worker(self, e: we.RetryBusyWorkerEvent) -> None:
        self.busy_workers.discard(e.worker)
        if e.worker not in self.data_needed:  # nothing more wanted from it: forget it
            self.busy_streak.pop(e.worker, None)
        elif e.worker not in self.in_flight_workers:
            self.fetchable_peers[e.worker] = None

    def _pause(self, e: we.PauseEvent) -> None:
        if e.paused != self.paused:
            self.paused = e.paused
            self._out.append(we.PausedMsg(e.paused))

    def _secede(self, e: we.SecedeEvent) -> None:
        ts = self.tasks.get(e.key)
        if ts is None or ts.state != "executing":
            return  # cancelled meanwhile, or done: nothing to free
        self._transition(ts, "long-running")

    def _rejoin(self, e: we.RejoinEvent) -> None:
        if e.key not in self.long_running:  # gone, or never seceded: nothing to wait for
            self._out.append(we.Rejoined(e.key))
            return
        self.rejoining.append(e.key)  # long-running, or cancelled while seceded

    def _grant_rejoins(self) -> None:
        """Seceded tasks asking to rejoin take free slots before any ready task."""
        while self.rejoining and len(self.executing_keys) < self.nthreads:
            key = self.rejoining.popleft()
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "long-running":
                self._transition(ts, "executing")
            elif ts is not None and ts.state == "cancelled" and key in self.long_running:
                # cancelled stays cancelled; its thread comes back under the budget
                self.long_running.discard(key)
                self.executing_keys.add(key)
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
        if self.paused:
            return  # running tasks (and rejoining ones) go on; no new one starts
        if self.task_resources and self.constrained:
            self._ensure_computing_constrained(self.nthreads * max(self.prefetch_per_thread, 1))
            return
        ready = self.ready
        executing = self.executing_keys
        nthreads = self.nthreads
        while ready:
            ts = ready.peek()
            n = len(executing)
            if n >= nthreads and (
                n >= nthreads * max(self.prefetch_per_thread, 1)
                or ts.duration >= self.prefetch_seconds
            ):
                break
            self._transition(ts, "executing")

    def _ensure_computing_constrained(self, most: int) -> None:
        """``_ensure_computing`` while tasks needing resources are ready: the first of
        ``constrained`` competes (by priority) with the first of ``ready`` when its
        resources are available, and waits otherwise."""
        ready, constrained, executing = self.ready, self.constrained, self.executing_keys
        available = self.available_resources
        while ready or constrained:
            ts: WTask | None = None
            if constrained:
                head = constrained.peek()
                wants = self.task_resources[head]
                if all(available.get(n, 0.0) >= a - 1e-9 for n, a in wants.items()) and (
                    not ready or head.priority <= ready.peek().priority
                ):
                    ts = head
            if ts is None:
                if not ready:
                    break
                ts = ready.peek()
            n = len(executing)
            if n >= self.nthreads and (n >= most or ts.duration >= self.prefetch_seconds):
                break
            self._transition(ts, "executing")

    def _ensure_communicating(self) -> None:
        """Start transfers from the peers holding data needed here, up to
        ``outgoing_connections`` at once. Only peers with no transfer in flight are
        looked at (``fetchable_peers``, in the order they became so): O(transfers
        started), however many peers are needed or in flight."""
        fetchable = self.fetchable_peers
        in_flight = self.in_flight_workers
        while fetchable and len(in_flight) < self.outgoing_connections:
            worker, _ = fetchable.popitem(last=False)
            heap = self.data_needed.get(worker)
            if heap is None:
                continue
            total = count = 0
            while heap:
                ts = heap.peek()
                size = max(ts.nbytes, 0)
                if count and total + size > self.transfer_message_bytes_limit:
                    break
                self._transition(ts, "flight", worker)  # joins in_flight_workers[worker]
                total += size
                count += 1
            keys = self.in_flight_workers.get(worker)
            if keys:
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
            if state == "long-running":
                assert key in self.long_running, ts
            elif key in self.long_running:
                assert state == "cancelled" and ts.coming_from is None, ts
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
        assert set(self.fetchable_peers) == (
            set(self.data_needed) - set(self.in_flight_workers) - self.busy_workers
        )
        assert not self.busy_workers & set(self.in_flight_workers)
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


#: The handler of each event type.
_HANDLERS: dict[type, Callable[[WorkerState, Any], None]] = {
    we.ComputeTaskEvent: WorkerState._compute_task,
    we.FreeKeysEvent: WorkerState._free_keys,
    we.RefreshWhoHasEvent: WorkerState._refresh_who_has,
    we.ExecuteSuccess: WorkerState._execute_success,
    we.ExecuteFailure: WorkerState._execute_failure,
    we.GatherDepDone: WorkerState._gather_dep_done,
    we.RetryBusyWorkerEvent: WorkerState._retry_busy_worker,
    we.UpdateDataEvent: WorkerState._update_data,
    we.AcquireReplicasEvent: WorkerState._acquire_replicas,
    we.PauseEvent: WorkerState._pause,
    we.SecedeEvent: WorkerState._secede,
    we.RejoinEvent: WorkerState._rejoin,
}
