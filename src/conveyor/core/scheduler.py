"""The scheduler's state machine: ``SchedulerState.handle(event) -> list[Instruction]``.

It owns every task, worker and client record, and never performs IO, reads a clock or
unpickles anything: run specs, results and exceptions pass through as opaque values.
Transition functions live in :mod:`conveyor.core.transitions`; this module turns events
into recommendations and answers read-only queries.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from conveyor.core import control, deaths, housekeeping
from conveyor.core import events as ev
from conveyor.core.instructions import (
    CloseWorker,
    FreeKeys,
    Instruction,
    KeysCancelled,
    RefreshWhoHas,
    ToWorker,
)
from conveyor.core.invariants import validate_scheduler
from conveyor.core.records import (
    EMPTY,
    ClientInfo,
    SharedBlob,
    TaskGroup,
    TaskState,
    WorkerInfo,
)
from conveyor.core.transitions import Recs, SchedulerTransitions
from conveyor.core.types import Key


class SchedulerState(SchedulerTransitions):
    """Everything the scheduler knows, and the rules for changing it.

    Feed it events with :meth:`handle`; carry out the instructions it returns.
    """

    #: how many finished runs :attr:`task_stream` keeps
    TASK_STREAM_SIZE = 10_000

    def __init__(self, *, worker_ttl: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.worker_ttl = worker_ttl
        self.generation = 0
        self.names: dict[str | int, str] = {}
        self.host_info: dict[str, dict[str, Any]] = {}
        self.event_counter = 0
        #: time of the last event that changed the set of tasks or workers' work
        self.last_activity = 0.0
        #: tasks of workers whose connection closed, kept until their nanny says which
        #: of them were running (:mod:`conveyor.core.deaths`), oldest first
        self.awaiting_verdict: dict[str, tuple[float, list[TaskState]]] = {}
        #: the last runs that ended, oldest first, as ``(prefix, key, worker, start,
        #: stop, erred)`` (the worker's clock; ``erred``: the run raised); bounded: the
        #: oldest go as new ones come
        self.task_stream: deque[tuple[str, Key, str, float, float, bool]] = deque(
            maxlen=self.TASK_STREAM_SIZE
        )
        #: runs ever appended to ``task_stream``: a cursor for readers that poll it
        self.task_stream_count = 0
        self._handlers: dict[type, Callable[[Any], None]] = {
            ev.AddWorker: self._add_worker,
            ev.RemoveWorker: self._remove_worker,
            ev.WorkerHeartbeat: self._heartbeat,
            ev.AddClient: self._add_client,
            ev.RemoveClient: self._remove_client,
            ev.UpdateGraph: self._update_graph,
            ev.TaskFinished: self._task_finished,
            ev.TaskErred: self._task_erred,
            ev.TaskLongRunning: self._task_long_running,
            ev.ClientDesiresKeys: self._client_desires_keys,
            ev.ClientReleasesKeys: self._client_releases_keys,
            ev.CancelKeys: self._cancel_keys,
            ev.UpdateData: self._update_data,
            ev.WorkerAddKeys: self._worker_add_keys,
            ev.MissingData: self._missing_data,
            ev.Tick: self._tick,
            ev.WorkerDied: partial(deaths.worker_died, self),
            ev.WorkerMemorySynced: partial(housekeeping.memory_synced, self),
            ev.ForgetPrefixes: partial(housekeeping.forget_prefixes, self),
            **control.handlers(self),
        }

    # ------------------------------------------------------------------ entry

    def handle(self, event: ev.SchedulerEvent) -> list[Instruction]:
        """Apply one event; return the instructions it produced, in order.

        If handling it raises, the instructions produced so far are dropped (they must
        not go out with the next event's) and the exception propagates. The state is not
        rolled back: what the handler changed before it failed stays changed.
        """
        self.event_counter += 1
        self._now = event.now
        self._stimulus = f"{type(event).__name__}-{self.event_counter}"
        try:
            self._handlers[type(event)](event)
        except BaseException:
            self._out = []
            raise
        out, self._out = self._out, []
        if len(out) > 1:
            out = merge_free_keys(out)
        if self.validate_state:
            self.validate()
        return out

    def validate(self) -> None:
        """Check every invariant; raise AssertionError naming the first one broken."""
        validate_scheduler(self)

    # ---------------------------------------------------------------- workers

    def _add_worker(self, e: ev.AddWorker) -> None:
        if e.address in self.workers:
            self._remove_worker(ev.RemoveWorker(e.now, e.address, "re-registered", True))
        ws = WorkerInfo(
            e.address, e.name, e.nthreads, e.memory_limit, e.host, e.now, e.resources, e.nanny
        )
        self.workers[e.address] = ws
        self.resource_book.add_worker(ws)
        self._ring.append(ws)
        self._liveness.add(ws)
        self.names[e.name] = e.address
        self.total_nthreads += e.nthreads
        info = self.host_info.setdefault(e.host, {"addresses": set(), "nthreads": 0})
        info["addresses"].add(e.address)
        info["nthreads"] += e.nthreads
        self._update_worker_sets(ws)
        self.last_activity = e.now
        recs: Recs = {}
        stale = []
        for key, nbytes in e.data.items():
            ts = self.tasks.get(key)
            if ts is not None and ts.state in ("memory", "released"):
                if ts.state == "memory":
                    self._add_replica(ts, ws, nbytes)
                else:
                    self._transition(ts, "memory", recs, workers=[ws], nbytes=nbytes)
            else:
                stale.append(key)
        if stale:
            self._out.append(FreeKeys(e.address, stale))
        for ts in list(self.unrunnable):
            if ts.resource_restrictions is None:  # those are offered by _fill_slots
                recs[ts] = "processing"
        self._transitions(recs)
        self._fill_slots(ws, recs)
        self._transitions(recs)

    def _remove_worker(
        self, e: ev.RemoveWorker, report: ev.WorkerDied | None = None, silent: bool = False
    ) -> None:
        """Remove a worker: what it ran goes elsewhere, what only it held is recomputed.

        ``report``: its nanny's, when that came before the connection closed; ``silent``:
        it is dropped for silence (worker-ttl). Which of its tasks its death counts
        against is decided in :mod:`conveyor.core.deaths`.
        """
        ws = self.workers.pop(e.address, None)
        if ws is None:
            return
        if self.names.get(ws.name) == e.address:
            del self.names[ws.name]
        self.retiring.pop(e.address, None)
        self.paused.pop(e.address, None)
        self.idle.pop(e.address, None)
        self.open_slots.pop(e.address, None)
        self.saturated.discard(ws)
        self._ring.remove(ws)
        self._liveness.remove(ws)
        self.resource_book.remove_worker(ws)
        self.total_nthreads -= ws.nthreads
        info = self.host_info[ws.host]
        info["addresses"].discard(e.address)
        info["nthreads"] -= ws.nthreads
        if not info["addresses"]:
            del self.host_info[ws.host]
        ws.status = "closed"
        self.last_activity = e.now
        recs: Recs = {}
        running = sorted(ws.processing, key=lambda t: t.priority)
        deaths.on_removal(self, e.address, running, e, report, ws.nanny, silent, recs)
        for ts in list(ws.has_what):
            self._remove_replica(ts, ws)
            if not ts.who_has and ts.state == "memory":
                self._transition(ts, "released", recs, force=True, lost=True)
        self._transitions(recs)

    def _heartbeat(self, e: ev.WorkerHeartbeat) -> None:
        ws = self.workers.get(e.address)
        if ws is not None:
            self._liveness.seen(ws, e.now)  # sets last_seen, keeps the ttl order
            ws.metrics = e.metrics

    def _tick(self, e: ev.Tick) -> None:
        deaths.expire_verdicts(self, e.now)
        ttl = self.worker_ttl
        if ttl is None:
            return
        for ws in self._liveness.expired(e.now, ttl):  # oldest first: O(1 + expired)
            reason = f"no heartbeat for {e.now - ws.last_seen:.1f}s (worker-ttl {ttl}s)"
            self._remove_worker(ev.RemoveWorker(e.now, ws.address, reason), silent=True)
            # should it wake up, it must not go on as a ghost: it is to close (and be
            # replaced by its nanny), its late results unwanted
            self._out.append(CloseWorker(ws.address, f"removed: {reason}"))

    # ---------------------------------------------------------------- clients

    def _client(self, client_id: str, now: float) -> ClientInfo:
        cs = self.clients.get(client_id)
        if cs is None:
            cs = self.clients[client_id] = ClientInfo(client_id, now)
        return cs

    def _add_client(self, e: ev.AddClient) -> None:
        self._client(e.client_id, e.now)

    def _remove_client(self, e: ev.RemoveClient) -> None:
        cs = self.clients.pop(e.client_id, None)
        if cs is None:
            return
        recs: Recs = {}
        for ts in list(cs.wants_what):
            self._unwant(cs, ts, recs)
        self._transitions(recs)
        cs.alone = ()  # a cycle otherwise: the record would wait for the cyclic GC

    def _want(self, cs: ClientInfo, ts: TaskState, recs: Recs) -> None:
        if cs not in ts.who_wants:
            ts.who_wants = (*ts.who_wants, cs) if ts.who_wants else cs.alone
            cs.wants_what.add(ts)
        if ts.state in ("memory", "erred"):
            self._report(ts, (cs,))
        elif ts.state == "released":
            recs[ts] = "waiting"

    def _unwant(self, cs: ClientInfo, ts: TaskState, recs: Recs) -> None:
        cs.wants_what.discard(ts)
        rest = tuple(c for c in ts.who_wants if c is not cs)
        ts.who_wants = rest[0].alone if len(rest) == 1 else rest
        if self._needed(ts):
            return
        if ts.state in ("released", "erred"):
            recs[ts] = "forgotten"
        else:
            recs[ts] = "released"

    def _update_graph(self, e: ev.UpdateGraph) -> None:
        cs = self._client(e.client_id, e.now)
        self.generation += 1
        self.last_activity = e.now
        for fid, data in e.functions.items():
            blob = self.functions.get(fid)
            if blob is None:
                blob = self.functions[fid] = SharedBlob(data)
            blob.refs += 1  # held while the graph is added: tasks may be forgotten at once
        recs: Recs = {}
        fresh = self._add_tasks(e, recs) if e.tasks else []
        for batch in e.batches:
            fresh += self._add_batch(cs, batch, -e.user_priority)
        for key in reversed(e.wanted):
            wanted = self.tasks.get(key)
            if wanted is not None:
                self._want(cs, wanted, recs)
        self._transitions(recs)
        for ts in fresh:
            self._forget_if_unneeded(ts, recs)
        self._transitions(recs)
        for fid in e.functions:
            self._unref_blob(fid)

    def _add_tasks(self, e: ev.UpdateGraph, recs: Recs) -> list[TaskState]:
        """Add the tasks of a graph, each with its own spec; return those that are new."""
        new: list[tuple[TaskState, ev.TaskSpec]] = []
        for spec in e.tasks:
            ts = self.tasks.get(spec.key)
            if ts is None:
                ts = self._new_task(spec.key, spec.run_spec)
            elif ts.state == "released" and ts.run_spec is None:
                ts.run_spec = spec.run_spec
            else:
                continue
            new.append((ts, spec))
        broken: list[TaskState] = []
        for ts, spec in new:
            user = e.user_priority if spec.priority is None else spec.priority
            ts.priority = (-user, self.generation, spec.order)
            if spec.workers or spec.retries or spec.resources:
                self._set_options(
                    ts, spec.workers, spec.allow_other_workers, spec.retries, spec.resources
                )
            problem = None
            if spec.function is not None:
                problem = self._use_blob(ts, spec.function)
            deps, missing = self._resolve(spec.dependencies)
            if missing is not None:
                problem = _missing_dependency(ts, missing)
            self._link(ts, tuple(deps))
            if problem is not None:
                ts.exception_text = problem
                ts.exception_blame = ts
                broken.append(ts)
        for ts in broken:
            self._transition(ts, "erred", recs)
        return [ts for ts, _ in new]

    def _add_batch(self, cs: ClientInfo, b: ev.TaskBatch, user_priority: float) -> list[TaskState]:
        """Add tasks submitted in bulk (``map``): one function, shared dependencies, and
        run specs that index into a shared chunk of arguments. A wanted batch is wanted
        (and moves on) task by task; the new tasks of another are returned."""
        problem = self._link_chunk(b.chunk, b.function)
        found, shared_missing = self._resolve(b.dependencies)
        shared = tuple(found)  # one tuple for every task without dependencies of its own
        group = self._group_of(b.keys[0]) if b.one_group and b.keys else None
        chunk = self.functions.get(b.chunk)
        if (
            problem is None
            and shared_missing is None
            and b.row_dependencies is None
            and b.wanted
            and not b.workers
            and not b.resources
            and group is not None
            and chunk is not None
            and self._add_fresh_batch(cs, b, shared, group, chunk, user_priority)
        ):
            return []
        generation = self.generation
        recs: Recs = {}
        unwanted: list[TaskState] = []
        for i, key in enumerate(b.keys):
            ts = self.tasks.get(key)
            if ts is None:
                ts = self._new_task(key, i, group)
            elif ts.state == "released" and ts.run_spec is None:
                ts.run_spec = i
            else:  # already submitted: only want it
                if b.wanted:
                    self._want(cs, ts, recs)
                    self._transitions(recs)
                continue
            ts.priority = (user_priority, generation, b.order + i)
            if b.workers or b.retries or b.resources:
                self._set_options(ts, b.workers, b.allow_other_workers, b.retries, b.resources)
            error = problem
            if error is None and chunk is not None:
                ts.function = b.chunk
                chunk.refs += 1
            deps, missing = shared, shared_missing
            if b.row_dependencies is not None:
                extra, row_missing = self._resolve(b.row_dependencies[i])
                if extra:
                    deps = tuple(dict.fromkeys((*shared, *extra)))
                if missing is None:
                    missing = row_missing
            if missing is not None and error is None:
                error = _missing_dependency(ts, missing)
            self._link(ts, deps)
            if error is not None:
                ts.exception_text = error
                ts.exception_blame = ts
                self._transition(ts, "erred", recs)
            if b.wanted:
                self._want(cs, ts, recs)
            else:
                unwanted.append(ts)
            self._transitions(recs)
        return unwanted

    def _add_fresh_batch(
        self,
        cs: ClientInfo,
        b: ev.TaskBatch,
        shared: tuple[TaskState, ...],
        group: TaskGroup,
        chunk: SharedBlob,
        user_priority: float,
    ) -> bool:
        """A ``map`` of unique keys (``pure=False``): new keys of one group, wanted by
        ``cs``, with only shared dependencies (all known) and no restrictions. Records
        are made and linked in bulk, then each task moves on in order. Unlike the general
        path, the group counts the whole batch before the first task moves, so root-ish
        queuing applies from the first task. False (and nothing done) if a key is known
        already or named twice."""
        tasks = self.tasks
        keys = set(b.keys)
        if len(keys) != len(b.keys) or not tasks.keys().isdisjoint(keys):
            return False
        generation, order, cid, alone = self.generation, b.order, b.chunk, cs.alone
        make = self.task_type
        new = [
            make(key, i, group, (user_priority, generation, order + i), shared, alone, cid)
            for i, key in enumerate(b.keys)
        ]
        tasks.update(zip(b.keys, new, strict=True))
        if b.retries:
            for ts in new:
                ts.retries = b.retries
        group.ntasks += len(new)
        group.states["released"] += len(new)
        chunk.refs += len(new)
        cs.wants_what.update(new)
        for dep in shared:
            if dep.dependents is EMPTY:
                dep.dependents = set(new)
            else:
                dep.dependents.update(new)
            dgroup = dep.group
            if dgroup is not group and dgroup not in group.dependencies:
                group.dependencies.add(dgroup)
                dgroup.dependents.add(group)
        recs: Recs = {}
        if self._released_waiting_bulk(new, shared, recs):
            self._transitions(recs)
            return True
        for ts in new:
            self._transition(ts, "waiting", recs)
            if recs:
                self._transitions(recs)
        return True

    def _link_chunk(self, cid: str, fid: str) -> str | None:
        """Tie argument chunk ``cid`` to the function its rows are applied to."""
        chunk = self.functions.get(cid)
        func = self.functions.get(fid)
        if chunk is None or func is None:
            return f"MissingFunction: a batch names unknown {cid if chunk is None else fid!r}"
        if cid == fid or func.requires is not None:
            return f"InvalidBatch: {fid!r} is an argument chunk, not a function"
        if chunk.requires is None:
            chunk.requires = fid
            func.refs += 1
        elif chunk.requires != fid:
            return f"InvalidBatch: chunk {cid!r} belongs to {chunk.requires!r}, not {fid!r}"
        return None

    def _use_blob(self, ts: TaskState, fid: str) -> str | None:
        """Make ``ts`` call shared blob ``fid``; the error text if there is no such blob."""
        blob = self.functions.get(fid)
        if blob is None:
            return f"MissingFunction: task {ts.key!r} names unknown {fid!r}"
        ts.function = fid
        blob.refs += 1
        return None

    def _resolve(self, keys: Iterable[Key]) -> tuple[list[TaskState], Key | None]:
        """The tasks of ``keys`` (without duplicates), and the first key not known."""
        found: dict[TaskState, None] = {}
        missing = None
        for key in keys:
            dep = self.tasks.get(key)
            if dep is None:
                if missing is None:
                    missing = key
            else:
                found[dep] = None
        return list(found), missing

    @staticmethod
    def _link(ts: TaskState, deps: tuple[TaskState, ...]) -> None:
        """Make ``deps`` the dependencies of ``ts`` (fixed from now on)."""
        group = ts.group
        for dep in deps:
            if dep.dependents is EMPTY:
                dep.dependents = {ts}
            else:
                dep.dependents.add(ts)
            dgroup = dep.group
            if dgroup is not group and dgroup not in group.dependencies:
                group.dependencies.add(dgroup)
                dgroup.dependents.add(group)  # the reverse link (see TaskGroup)
        ts.dependencies = deps

    def _set_options(
        self,
        ts: TaskState,
        workers: tuple[str, ...] | None,
        allow_other_workers: bool,
        retries: int,
        resources: dict[str, float] | None = None,
    ) -> None:
        if retries:
            ts.retries = retries
        if workers:
            # names of workers not (yet) connected stay names: placement resolves them
            ts.worker_restrictions = frozenset(self.names.get(w, w) for w in workers)
            ts.loose_restrictions = allow_other_workers
        if resources:
            ts.resource_restrictions = resources

    def _forget_if_unneeded(self, ts: TaskState, recs: Recs) -> None:
        # "erred": a task broken at submission (missing dependency) that nobody wants
        if ts.state in ("released", "erred") and not self._needed(ts) and not ts.dependents:
            recs[ts] = "forgotten"

    def _client_desires_keys(self, e: ev.ClientDesiresKeys) -> None:
        cs = self._client(e.client_id, e.now)
        recs: Recs = {}
        for key in e.keys:
            ts = self.tasks.get(key)
            if ts is not None:
                self._want(cs, ts, recs)
        self._transitions(recs)

    def _client_releases_keys(self, e: ev.ClientReleasesKeys) -> None:
        cs = self.clients.get(e.client_id)
        if cs is None:
            return
        recs: Recs = {}
        for key in e.keys:
            ts = self.tasks.get(key)
            if ts is not None and ts in cs.wants_what:
                self._unwant(cs, ts, recs)
        self._transitions(recs)

    def _cancel_keys(self, e: ev.CancelKeys) -> None:
        recs: Recs = {}
        cancelled: dict[str, list[Key]] = {}
        for key in e.keys:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            holders = list(ts.who_wants) if e.force else [self._client(e.client_id, e.now)]
            for cs in holders:
                if ts in cs.wants_what:
                    self._unwant(cs, ts, recs)
                    cancelled.setdefault(cs.client_id, []).append(key)
        self._transitions(recs)
        for client_id, keys in cancelled.items():
            self._out.append(KeysCancelled(client_id, keys))

    def _update_data(self, e: ev.UpdateData) -> None:
        cs = self._client(e.client_id, e.now)
        recs: Recs = {}
        for key, addresses in e.who_has.items():
            holders = [self.workers[a] for a in addresses if a in self.workers]
            if not holders:
                continue
            ts = self.tasks.get(key)
            if ts is None:
                ts = self._new_task(key, None)
            nbytes = e.nbytes.get(key, -1)
            if ts.state == "memory":
                for ws in holders:
                    self._add_replica(ts, ws, nbytes)
            else:
                if ts.state != "released":
                    self._transition(ts, "released", recs, force=True)
                self._transition(ts, "memory", recs, workers=holders, nbytes=nbytes)
            self._want(cs, ts, recs)
        self._transitions(recs)

    # ------------------------------------------------------------ task results

    def _task_finished(self, e: ev.TaskFinished) -> None:
        ws = self.workers.get(e.worker)
        if ws is None:
            return
        self._liveness.seen(ws, e.now)
        self.last_activity = e.now
        ts = self.tasks.get(e.key)
        if ts is not None and e.run_id and e.run_id != ts.run_id:
            return  # about an earlier run, freed since: the worker dropped that result
        if ts is not None and ts.state == "processing" and ts.processing_on is ws:
            recs: Recs = {}
            # start == stop (0.0, 0.0) means the worker did not run it (it had the data)
            duration = e.stop - e.start if e.stop > e.start else None
            if duration is not None:
                run = (ts.group.prefix.name, e.key, e.worker, e.start, e.stop, False)
                self.task_stream.append(run)
                self.task_stream_count += 1
            self._transition(
                ts,
                "memory",
                recs,
                worker=ws,
                nbytes=e.nbytes,
                type=e.type,
                duration=duration,
                result=e.result,
            )
            self._transitions(recs)
        elif ts is not None and ts.state == "memory":
            self._add_replica(ts, ws, e.nbytes)
        else:
            self._out.append(FreeKeys(e.worker, [e.key]))

    def _task_erred(self, e: ev.TaskErred) -> None:
        ws = self.workers.get(e.worker)
        if ws is None:
            return
        self.last_activity = e.now
        ts = self.tasks.get(e.key)
        if ts is not None and e.run_id and e.run_id != ts.run_id:
            return  # about an earlier run, freed since
        if ts is None or ts.state != "processing" or ts.processing_on is not ws:
            self._out.append(FreeKeys(e.worker, [e.key]))
            return
        recs: Recs = {}
        if e.stop > e.start:  # a failed run is a run: the task stream shows it too
            self.task_stream.append((ts.group.prefix.name, e.key, e.worker, e.start, e.stop, True))
            self.task_stream_count += 1
        if ts.retries > 0:
            ts.retries -= 1
            self._transition(ts, "released", recs, force=True)
        else:
            self._transition(
                ts,
                "erred",
                recs,
                worker=e.worker,
                exception=e.exception,
                traceback=e.traceback,
                exception_text=e.exception_text,
                traceback_text=e.traceback_text,
            )
        self._transitions(recs)

    def _task_long_running(self, e: ev.TaskLongRunning) -> None:
        """A task seceded: it runs on, but leaves its worker's slots and occupancy, so
        the worker gets more work (and queued tasks may go there)."""
        ws = self.workers.get(e.worker)
        ts = self.tasks.get(e.key)
        if ws is None or ts is None or ts.processing_on is not ws:
            return
        if e.run_id and e.run_id != ts.run_id:
            return
        duration = ws.processing.get(ts, 0.0)
        ws.processing[ts] = 0.0
        ws.occupancy = max(ws.occupancy - duration, 0.0)
        ws.long_running.add(ts)
        self._update_worker_sets(ws)
        recs: Recs = {}
        self._fill_slots(ws, recs)
        self._transitions(recs)

    def _worker_add_keys(self, e: ev.WorkerAddKeys) -> None:
        ws = self.workers.get(e.worker)
        if ws is None:
            return
        stale = []
        for key, nbytes in e.keys.items():
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "memory":
                self._add_replica(ts, ws, nbytes)
            elif ts is not None and ts.processing_on is ws:
                # The replica arrived while a ComputeTask for the key is on its way to
                # this worker, which will answer it with TaskFinished: keep its copy.
                continue
            else:
                stale.append(key)
        if stale:
            self._out.append(FreeKeys(e.worker, stale))

    def _missing_data(self, e: ev.MissingData) -> None:
        ts = self.tasks.get(e.key)
        if ts is None or e.worker not in self.workers:
            return  # a late report from a worker removed since (e.g. by worker-ttl)
        errant = self.workers.get(e.errant_worker)
        if errant is not None and errant in ts.who_has:
            # The fetch may have failed on a time-out while the errant worker still holds
            # the key: it drops that copy, so that it is not kept unknown to us forever.
            self._remove_replica(ts, errant)
            self._out.append(FreeKeys(errant.address, [ts.key]))
            if deaths.unserving(errant, e.now):  # it answers us, but serves nobody
                reason = f"its peers failed to fetch data from it {deaths.UNSERVED_LIMIT} times"
                # judged as a lost connection: it may be dying, its nanny will say
                self._remove_worker(ev.RemoveWorker(e.now, errant.address, reason))
                self._out.append(CloseWorker(errant.address, f"removed: {reason}"))
        recs: Recs = {}
        if ts.state == "memory" and not ts.who_has:
            self._transition(ts, "released", recs, force=True, lost=True)
        elif ts.who_has:
            self._out.append(RefreshWhoHas(e.worker, {ts.key: [w.address for w in ts.who_has]}))
        self._transitions(recs)

    # ---------------------------------------------------------------- queries

    def who_has(self, keys: Iterable[Key] | None = None) -> dict[Key, list[str]]:
        """Addresses of the workers holding each key (all keys in memory by default)."""
        tasks = self.tasks
        sel = tasks.values() if keys is None else (tasks[k] for k in keys if k in tasks)
        return {ts.key: [ws.address for ws in ts.who_has] for ts in sel}

    def has_what(self, workers: Iterable[str] | None = None) -> dict[str, list[Key]]:
        """Keys held by each worker."""
        addrs = self.workers if workers is None else [w for w in workers if w in self.workers]
        return {a: [ts.key for ts in self.workers[a].has_what] for a in addrs}

    def nthreads(self) -> dict[str, int]:
        """Threads per worker address."""
        return {a: ws.nthreads for a, ws in self.workers.items()}

    @property
    def task_duration(self) -> housekeeping.TaskDurations:
        """Expected run time per key prefix, in seconds: learned, or set by an operator
        (``state.task_duration["load"] = 2.0``)."""
        return housekeeping.TaskDurations(self)

    def run_spec_of(self, key: Key, blame: bool = False) -> dict[str, Any] | None:
        """What a client needs to run task ``key`` itself (``recreate_error_locally``):
        its opaque run spec, the shared blobs it refers to, and its dependencies' keys.
        With ``blame``, the task whose failure made ``key`` fail. None if unknown."""
        ts = self.tasks.get(key)
        if ts is None:
            return None
        if blame and ts.state == "erred" and ts.exception_blame is not None:
            ts = ts.exception_blame
        blobs: dict[str, Any] = {}
        bid = ts.function
        while bid is not None and bid in self.functions:
            blob = self.functions[bid]
            blobs[bid] = blob.data
            bid = blob.requires
        return {
            "key": ts.key,
            "state": ts.state,
            "run_spec": ts.run_spec,
            "function": ts.function,
            "blobs": blobs,
            "dependencies": [dep.key for dep in ts.dependencies],
        }

    def story(self, *keys: Key) -> list[tuple[Key, str, str, str, float]]:
        """Transition log entries (key, start, finish, stimulus, time) for these keys."""
        wanted = set(keys)
        return [entry for entry in self.transition_log if entry[0] in wanted]

    def is_idle(self) -> bool:
        """No task is waiting, queued or running (O(1): called on every tick)."""
        return not (self.nprocessing or self.queued or self.unrunnable)

    def workers_info(self) -> dict[str, dict[str, Any]]:
        """A summary of each worker for ``Client.scheduler_info``."""
        return {
            a: {
                "type": "Worker",
                "name": ws.name,
                "nthreads": ws.nthreads,
                "memory_limit": ws.memory_limit,
                "host": ws.host,
                "status": ws.status,
                "processing": len(ws.processing),
                "nbytes": ws.nbytes,
                "nkeys": len(ws.has_what),
                "last_seen": ws.last_seen,
                "metrics": ws.metrics,
                "resources": dict(ws.resources),
                "used_resources": dict(ws.used_resources),
            }
            for a, ws in self.workers.items()
        }


def _missing_dependency(ts: TaskState, key: Key) -> str:
    return (
        f"MissingDependency: task {ts.key!r} depends on {key!r}, "
        "which the scheduler does not know (was its future released?)"
    )


def merge_free_keys(out: list[Instruction]) -> list[Instruction]:
    """Merge each worker's ``FreeKeys`` with its previous one, unless another instruction
    for that worker came between them: releasing 10,000 keys is then one message per
    worker, not 10,000. The order of what each worker receives is unchanged."""
    merged: list[Instruction] = []
    open_free: dict[str, FreeKeys] = {}
    for instr in out:
        if isinstance(instr, FreeKeys):
            last = open_free.get(instr.worker)
            if last is not None:
                last.keys.extend(instr.keys)
                continue
            instr = FreeKeys(instr.worker, list(instr.keys))
            open_free[instr.worker] = instr
        elif isinstance(instr, ToWorker):
            open_free.pop(instr.worker, None)
        merged.append(instr)
    return merged
