"""A deterministic simulated cluster: one SchedulerState, N WorkerStates, a seeded network.

Theory of operation
-------------------
Nothing here runs concurrently. Every message between the scheduler, the workers and the
clients sits in a FIFO queue per *link* ``(source, destination, channel)``; task executions
sit in a pool. Each :meth:`SimCluster.step` picks, with a seeded :class:`random.Random`,
one link head or one execution and delivers it, after advancing a fake clock. So any
interleaving that a real network with ordered connections allows can happen, and the same
seed always produces the same interleaving: a failing seed replays exactly (within one
interpreter; across processes, set ``PYTHONHASHSEED`` too, since both state machines
iterate sets of strings).

Execution is simulated. A run spec is a small tuple:

* ``("add", dep, ...)``: the value is ``(1 + sum(dependency values)) % MODULUS``;
* ``("value", v)``: the value is ``v``;
* ``("fail", text, dep, ...)``: the task raises; ``text`` becomes the exception text;
* ``("flaky", n, dep, ...)``: fails its first ``n`` runs, then behaves as ``"add"``.

A worker executes a task with the values found in *its own* data store, so a state
machine that starts a task before its dependencies arrived fails loudly. Transfers copy
values between the simulated stores: a fetch is a request on the link ``(fetcher, peer,
"data")`` and, when the peer serves it, a response on ``(peer, fetcher, "data")`` holding
whatever the peer had at that moment.

A killed worker loses its data, its running tasks and the messages sent to it; the
messages it already sent are still delivered, then the scheduler sees ``RemoveWorker``
(as a real scheduler sees a closed connection after the bytes before it). Fetches it has
not served yet fail; answers it already sent still arrive.

After every step both state machines are validated, and each worker's ``memory`` tasks
must match its data store exactly (no leaked or phantom data).

Nothing here waits on time: no heartbeats, ticks or time-outs, and a fetch is answered
or fails because its peer died. :class:`~conveyor.testing.sim_faults.FaultySimCluster`
adds them, with frozen workers and stalled links, through the hooks ``_choices`` (what
may be delivered now), ``_fire_timer``, ``_idle_step`` and ``_fetch_over``.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from conveyor.core import events as ev
from conveyor.core import instructions as si
from conveyor.core import worker_events as we
from conveyor.core.housekeeping import memory_of
from conveyor.core.scheduler import SchedulerState
from conveyor.core.transitions import prefix_and_group
from conveyor.core.types import Key
from conveyor.core.worker import WorkerState
from conveyor.testing.sim_graphs import (
    MODULUS,
    dependencies_of,
    expected_values,
    random_dag,
)

__all__ = [
    "MODULUS",
    "SimCluster",
    "SimStuck",
    "dependencies_of",
    "expected_values",
    "random_dag",
]

SCHEDULER = "scheduler"
#: id of the shared function every simulated batch calls
SIM_FUNCTION = "sim-function"

Link = tuple[str, str, str]


class SimStuck(AssertionError):
    """The simulation did not become quiet, or stopped with work left undone."""


@dataclass(slots=True)
class _Running:
    """A task a simulated worker thread is running."""

    worker: str
    key: Key
    start: float
    value: Any
    error: str | None


@dataclass(slots=True)
class _Fetch:
    """A transfer ``fetcher`` asked ``peer`` for; ``done`` once answered or given up."""

    fetcher: str
    peer: str
    keys: list[Key]
    done: bool = False
    #: the id of its time-out timer, if any (see conveyor.testing.sim_faults)
    timer: int = 0


class SimCluster:
    """One scheduler and ``n_workers`` workers exchanging messages over a seeded network.

    ``sim.submit(client, tasks, wanted)`` sends a graph (``{key: run_spec}``);
    :meth:`run_until_quiet` delivers everything; :meth:`result` reads a value back.
    """

    def __init__(
        self,
        n_workers: int = 3,
        nthreads: int = 2,
        seed: int = 0,
        *,
        validate: bool = True,
        scheduler_kwargs: dict[str, Any] | None = None,
        worker_kwargs: dict[str, Any] | None = None,
        nbytes: Callable[[Key, Any], int] | None = None,
        max_tick: float = 0.01,
        nannies: bool = False,
        serve_limit: int | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        #: workers have nannies, which report each death with what was running
        self.nannies = nannies
        #: a worker answers fetches busy while this many of its replies travel
        self.serve_limit = serve_limit
        #: replies in transit, by the worker that sent them
        self.serving: Counter[str] = Counter()
        #: fetches answered busy, in all
        self.busy_answers = 0
        self.seed = seed
        self.now = 0.0
        self.step_count = 0
        self.max_tick = max_tick
        self.validate_state = validate
        self.scheduler = SchedulerState(
            validate=validate, replayable=True, **(scheduler_kwargs or {})
        )
        self.worker_kwargs = dict(worker_kwargs or {})
        self.nbytes = nbytes or (lambda key, value: 100)
        self.workers: dict[str, WorkerState] = {}
        self.data: dict[str, dict[Key, Any]] = {}
        self.dead: set[str] = set()
        #: state machines of killed workers, kept for their logs
        self.retired: dict[str, WorkerState] = {}
        self.links: dict[Link, deque[Callable[[], None]]] = {}
        self.running: dict[tuple[str, Key], _Running] = {}
        #: messages the scheduler sent to each client, in order
        self.client_messages: dict[str, list[si.ToClient]] = {}
        #: how often each key started executing, over all workers
        self.executions: Counter[Key] = Counter()
        #: every event delivered, in order (for replay comparisons)
        self.trace: list[tuple[str, Any]] = []
        self._kills: dict[int, list[str]] = {}
        self._attempts: Counter[Key] = Counter()
        self._touched: set[str] = set()
        #: the content of each argument chunk sent in a batch: a run spec per row
        self.blobs: dict[str, list[tuple[Any, ...]]] = {}
        #: the shared blobs each worker was sent and not yet told to free
        self.worker_blobs: dict[str, set[str]] = {}
        #: answers to :meth:`sync_memory`: (worker, missing, extra)
        self.synced: list[tuple[str, tuple[Key, ...], tuple[Key, ...]]] = []
        for i in range(n_workers):
            self.add_worker(f"sim://worker-{i}", nthreads)

    # ------------------------------------------------------------------ setup

    def add_worker(self, address: str, nthreads: int = 2, name: str | int | None = None) -> None:
        """Start a worker and register it with the scheduler (synchronously)."""
        if address in self.workers or address in self.dead:
            raise ValueError(f"address {address!r} already used")
        self.workers[address] = WorkerState(
            address,
            nthreads,
            validate=self.validate_state,
            replayable=True,
            **self.worker_kwargs,
        )
        self.data[address] = {}
        event = ev.AddWorker(
            self.now, address, name or address, nthreads, 2**30, "sim-host", nanny=self.nannies
        )
        self._to_scheduler(event)

    def kill_worker(self, address: str, died: bool = True) -> None:
        """The worker dies now: data, running tasks and inbound messages are lost.

        With nannies, its nanny reports the death on a link of its own, so the report
        may reach the scheduler before or after the worker's closed connection does;
        it names some of the tasks the worker was executing (a seeded choice of at most
        ``nthreads``: which of them had a thread). ``died=False``: it was told to close.
        """
        if address not in self.workers:
            raise KeyError(address)
        if self.nannies:
            executing = sorted((k for a, k in self.running if a == address), key=repr)
            nthreads = self.workers[address].nthreads
            named = self.rng.sample(executing, min(len(executing), nthreads))
            report = ev.WorkerDied(0.0, address, "sim-kill", named, died)
            self._send(
                (f"nanny:{address}", SCHEDULER, "ctl"),
                lambda: self._to_scheduler(replace(report, now=self.now)),
            )
        self.retired[address] = self.workers.pop(address)
        del self.data[address]
        self.worker_blobs.pop(address, None)
        self.dead.add(address)
        self.trace.append(("kill", address))
        for key in [k for k in self.running if k[0] == address]:
            del self.running[key]
        for link in list(self.links):
            if link[1] == address and link[2] == "ctl":
                del self.links[link]
        # The scheduler notices once the worker's last messages are in.
        self._send((address, SCHEDULER, "ctl"), self._remove_worker_cb(address))

    def kill_at(self, step: int, address: str) -> None:
        """Kill ``address`` just before step number ``step`` is taken."""
        self._kills.setdefault(step, []).append(address)

    # ----------------------------------------------------------------- client

    def submit(
        self,
        client_id: str,
        tasks: Mapping[Key, tuple[Any, ...]],
        wanted: Iterable[Key] | None = None,
        *,
        retries: Mapping[Key, int] | None = None,
        restrictions: Mapping[Key, tuple[str, ...]] | None = None,
        user_priority: int = 0,
        batch_size: int = 0,
    ) -> None:
        """Send a graph ``{key: run_spec}`` (dependencies are read from the run specs).

        With ``batch_size``, tasks travel as ``TaskBatch``es of up to that many (as
        ``Client.map`` sends them): run specs go into shared chunks, dependencies common
        to a batch are shared, and a run of tasks with the same options is one batch.
        """
        retries = retries or {}
        restrictions = restrictions or {}
        wanted_list = list(tasks) if wanted is None else list(wanted)
        if batch_size:
            batches, blobs = self._batches(
                tasks, set(wanted_list), retries, restrictions, batch_size
            )
            self._from_client(
                client_id,
                lambda now: ev.UpdateGraph(
                    now, client_id, [], wanted_list, user_priority, blobs, batches
                ),
            )
            return
        specs = [
            ev.TaskSpec(
                key,
                spec,
                dependencies_of(spec),
                order=i,
                workers=restrictions.get(key),
                retries=retries.get(key, 0),
            )
            for i, (key, spec) in enumerate(tasks.items())
        ]
        self._from_client(
            client_id,
            lambda now: ev.UpdateGraph(now, client_id, specs, wanted_list, user_priority),
        )

    def _batches(
        self,
        tasks: Mapping[Key, tuple[Any, ...]],
        wanted: set[Key],
        retries: Mapping[Key, int],
        restrictions: Mapping[Key, tuple[str, ...]],
        size: int,
    ) -> tuple[list[ev.TaskBatch], dict[str, bytes]]:
        blobs = {SIM_FUNCTION: b"sim-function"}
        out: list[ev.TaskBatch] = []
        run: list[Key] = []
        items = list(tasks)

        def close(start: int) -> None:
            if not run:
                return
            cid = f"sim-chunk-{len(self.blobs)}"
            self.blobs[cid] = [tasks[k] for k in run]
            blobs[cid] = cid.encode()
            deps = [dependencies_of(tasks[k]) for k in run]
            shared = set(deps[0]).intersection(*deps[1:])
            common = tuple(d for d in deps[0] if d in shared)
            rows: list[tuple[Key, ...]] | None = [
                tuple(d for d in row if d not in shared) for row in deps
            ]
            groups = {prefix_and_group(k)[1] for k in run}
            out.append(
                ev.TaskBatch(
                    list(run),
                    SIM_FUNCTION,
                    cid,
                    common,
                    rows if rows and any(rows) else None,
                    start,
                    restrictions.get(run[0]),
                    False,
                    retries.get(run[0], 0),
                    len(groups) == 1,
                    all(k in wanted for k in run),
                )
            )
            run.clear()

        start = 0
        for i, key in enumerate(items):
            options = (retries.get(key, 0), restrictions.get(key))
            if run and (
                len(run) >= size or options != (retries.get(run[0], 0), restrictions.get(run[0]))
            ):
                close(start)
            if not run:
                start = i
            run.append(key)
        close(start)
        return out, blobs

    def release(self, client_id: str, keys: Iterable[Key]) -> None:
        """The client drops its futures for ``keys``."""
        keys = list(keys)
        self._from_client(client_id, lambda now: ev.ClientReleasesKeys(now, client_id, keys))

    def cancel(self, client_id: str, keys: Iterable[Key], force: bool = False) -> None:
        """The client cancels ``keys``."""
        keys = list(keys)
        self._from_client(client_id, lambda now: ev.CancelKeys(now, client_id, keys, force))

    def scatter(self, client_id: str, data: Mapping[Key, Any], workers: Iterable[str]) -> None:
        """Put ``data`` on ``workers`` directly, then tell the scheduler."""
        addresses = [w for w in workers if w in self.workers]
        sizes = {k: self.nbytes(k, v) for k, v in data.items()}
        for address in addresses:
            self.data[address].update(data)
            self._worker_handle(address, we.UpdateDataEvent(self.now, dict(sizes)))
        who_has = {k: list(addresses) for k in data}
        self._from_client(client_id, lambda now: ev.UpdateData(now, client_id, who_has, sizes))

    def sync_memory(self, address: str) -> None:
        """The scheduler asks ``address`` to reconcile its memory (``conveyor.core.
        housekeeping``): the request names what the scheduler believes now and travels
        the scheduler's link in order; the answer, made from the worker's data when the
        request arrives, travels back on the worker's link. ``self.synced`` records each
        answer's ``(address, missing, extra)``."""
        named = set(memory_of(self.scheduler, address))

        def deliver() -> None:
            if address not in self.workers:
                return
            data = self.data[address]
            missing = tuple(k for k in named if k not in data)
            extra = tuple(k for k in data if k not in named)
            self.synced.append((address, missing, extra))
            if missing:
                self._worker_handle(address, we.FreeKeysEvent(self.now, list(missing)))
            self._send(
                (address, SCHEDULER, "ctl"),
                lambda: self._to_scheduler(
                    ev.WorkerMemorySynced(self.now, address, missing, extra)
                ),
            )

        self._send((SCHEDULER, address, "ctl"), deliver)

    def result(self, key: Key) -> Any:
        """The value of ``key``, read from a worker the scheduler says holds it."""
        ts = self.scheduler.tasks.get(key)
        if ts is None or ts.state != "memory":
            raise KeyError(f"{key!r} is not in memory ({ts!r})")
        values = [self.data[ws.address][key] for ws in sorted(ts.who_has)]
        if any(v != values[0] for v in values):
            raise AssertionError(f"replicas of {key!r} disagree: {values}")
        return values[0]

    # ----------------------------------------------------------------- running

    def step(self) -> bool:
        """Deliver one message or finish one execution (or, with timers, fire one that
        fell due); False if nothing could be done."""
        for address in self._kills.pop(self.step_count, ()):
            if address in self.workers:
                self.kill_worker(address)
        links, running = self._choices()
        total = len(links) + len(running)
        if not total:
            return self._idle_step()
        self.step_count += 1
        self.now += self.rng.uniform(0.0, self.max_tick)
        if self._fire_timer():
            pass  # a timer fell due: that is this step
        elif (i := self.rng.randrange(total)) < len(links):
            link = links[i]
            queue = self.links[link]
            action = queue.popleft()
            if not queue:
                del self.links[link]
            action()
        else:
            self._finish_execution(self.running.pop(running[i - len(links)]))
        self.check()
        return True

    def run(self, steps: int) -> None:
        """Take up to ``steps`` steps."""
        for _ in range(steps):
            if not self.step():
                return

    def run_until_quiet(self, max_steps: int = 100_000) -> int:
        """Step until nothing is pending; the number of steps taken. SimStuck if too many."""
        start = self.step_count
        while self.step():
            if self.step_count - start > max_steps:
                raise SimStuck(f"seed {self.seed}: not quiet after {max_steps} steps")
        # a kill scheduled for a step after the last one still happens
        while self._kills:
            for address in self._kills.pop(min(self._kills)):
                if address in self.workers:
                    self.kill_worker(address)
            while self.step():
                if self.step_count - start > max_steps:
                    raise SimStuck(f"seed {self.seed}: not quiet after {max_steps} steps")
        return self.step_count - start

    def logs(self) -> dict[str, list[Any]]:
        """The scheduler's transition log and every worker's, by address (for replays)."""
        out: dict[str, list[Any]] = {SCHEDULER: list(self.scheduler.transition_log)}
        for address, ws in {**self.retired, **self.workers}.items():
            out[address] = list(ws.log)
        return out

    def is_quiet(self) -> bool:
        """Nothing in transit and nothing running."""
        return not self.running and not any(self.links.values())

    # ----------------------------------------------------------------- checks

    def check(self, everything: bool = False) -> None:
        """Check the data of the workers touched by the last step against their state.

        The state machines validate themselves after every event they handle (they are
        built with ``validate=True``); ``everything=True`` also re-validates them all.
        """
        if not self.validate_state:
            return
        touched = set(self.workers) if everything else self._touched & set(self.workers)
        self._touched.clear()
        if everything:
            self.scheduler.validate()
        for address in sorted(touched):
            ws = self.workers[address]
            if everything:
                ws.validate()
            in_memory = {k for k, t in ws.tasks.items() if t.state == "memory"}
            stored = set(self.data[address])
            if in_memory != stored:
                raise AssertionError(
                    f"{address}: memory tasks {sorted(map(repr, in_memory - stored))} have no "
                    f"data; data {sorted(map(repr, stored - in_memory))} has no memory task"
                )

    def check_quiet(self) -> None:
        """At rest, the scheduler's view of each worker's data is the truth."""
        if not self.is_quiet():
            raise AssertionError("not quiet")
        self.check(everything=True)
        s = self.scheduler
        stuck = [ts for ts in s.tasks.values() if ts.state in ("processing", "waiting")]
        if stuck or s.queued or s.unrunnable:
            raise SimStuck(
                f"seed {self.seed}: quiet with work left: {stuck[:5]} "
                f"queued={len(s.queued)} no-worker={len(s.unrunnable)}"
            )
        for address, data in self.data.items():
            ws = s.workers.get(address)
            held = {ts.key for ts in ws.has_what} if ws is not None else set()
            if set(data) != held:
                raise AssertionError(
                    f"{address}: holds {sorted(map(repr, set(data) - held))} unknown to the "
                    f"scheduler; scheduler thinks it holds {sorted(map(repr, held - set(data)))}"
                )

    # ------------------------------------------------------------ internals

    def _choices(self) -> tuple[list[Link], list[tuple[str, Key]]]:
        """The links whose head may be delivered now, and the executions that may end."""
        return [link for link, queue in self.links.items() if queue], list(self.running)

    def _idle_step(self) -> bool:
        """Nothing can be delivered: take a step anyway (True) or report quiet (False)."""
        return False

    def _fire_timer(self) -> bool:
        """Carry out a timer that fell due as this step's action (there are none here)."""
        return False

    def _fetch_over(self, fetch: _Fetch) -> None:
        """``fetch`` got its answer (or can get none): later deliveries for it are void."""
        fetch.done = True

    def _send(self, link: Link, action: Callable[[], None]) -> None:
        queue = self.links.get(link)
        if queue is None:
            queue = self.links[link] = deque()
        queue.append(action)

    def _from_client(self, client_id: str, make: Callable[[float], ev.SchedulerEvent]) -> None:
        self._send((client_id, SCHEDULER, "ctl"), lambda: self._to_scheduler(make(self.now)))

    def _remove_worker_cb(self, address: str) -> Callable[[], None]:
        return lambda: self._to_scheduler(ev.RemoveWorker(self.now, address, "sim-kill"))

    def _to_scheduler(self, event: ev.SchedulerEvent) -> None:
        self.trace.append((SCHEDULER, event))
        for instr in self.scheduler.handle(event):
            if isinstance(instr, si.ToClient):
                self.client_messages.setdefault(instr.client_id, []).append(instr)
            elif instr.worker in self.workers:
                self._send((SCHEDULER, instr.worker, "ctl"), self._delivery(instr))

    def _delivery(self, instr: si.ToWorker) -> Callable[[], None]:
        address = instr.worker
        if isinstance(instr, si.CloseWorker):
            return lambda: self.kill_worker(address, False) if address in self.workers else None
        if isinstance(instr, si.FreeFunctions):
            ids = list(instr.ids)
            return lambda: self.worker_blobs.get(address, set()).difference_update(ids)
        if isinstance(instr, si.ComputeTask) and instr.function is not None:
            batched = instr

            def deliver_batched() -> None:
                if address in self.workers:
                    unpacked = self._unpack_chunk(batched)
                    self._worker_handle(address, _worker_event_factory(unpacked)(self.now))

            return deliver_batched
        make = _worker_event_factory(instr)

        def deliver() -> None:
            if address in self.workers:
                self._worker_handle(address, make(self.now))

        return deliver

    def _unpack_chunk(self, instr: si.ComputeTask) -> si.ComputeTask:
        """Check the worker gets the shared blobs a task needs once, in time; then hand
        it the row of the chunk as its run spec."""
        held = self.worker_blobs.setdefault(instr.worker, set())
        sent = set(instr.blobs or ())
        if sent & held:
            raise AssertionError(f"{instr.worker} is sent blobs it holds: {sent & held}")
        held |= sent
        fid = instr.function
        if fid not in held or SIM_FUNCTION not in held:
            raise AssertionError(f"{instr.worker} runs {instr.key!r} without blob {fid!r}")
        spec = self.blobs[fid][instr.run_spec]
        return replace(instr, run_spec=spec, function=None, blobs=None)

    def _worker_handle(self, address: str, event: we.WorkerEvent) -> None:
        self.trace.append((address, event))
        self._touched.add(address)
        data = self.data[address]
        ws = self.workers[address]
        for instr in ws.handle(event):
            if isinstance(instr, we.Execute):
                self._start_execution(address, instr.key)
            elif isinstance(instr, we.GatherDep):
                self._send((address, instr.worker, "data"), self._fetch(address, instr))
            elif isinstance(instr, we.RetryBusyWorkerLater):  # "later": a link of its own
                self._send((address, instr.worker, "retry"), self._retry(address, instr.worker))
            elif isinstance(instr, we.DeleteData):
                for key in instr.keys:
                    data.pop(key, None)
            else:
                self._send((address, SCHEDULER, "ctl"), self._report(address, instr))

    def _report(self, address: str, instr: we.WorkerInstruction) -> Callable[[], None]:
        make = _scheduler_event_factory(address, instr)
        return lambda: self._to_scheduler(make(self.now))

    def _fetch(self, fetcher: str, instr: we.GatherDep) -> Callable[[], None]:
        fetch = _Fetch(fetcher, instr.worker, list(instr.keys))
        return lambda: self._serve(fetch)

    def _start_execution(self, address: str, key: Key) -> None:
        wts = self.workers[address].tasks[key]
        spec = wts.run_spec
        data = self.data[address]
        deps = dependencies_of(spec)
        missing = [d for d in deps if d not in data]
        if missing:
            raise AssertionError(f"{address} executes {key!r} without {missing} in its data")
        self.executions[key] += 1
        self._attempts[key] += 1
        value: Any = None
        error: str | None = None
        op = spec[0]
        if op == "value":
            value = spec[1]
        elif op == "fail" or (op == "flaky" and self._attempts[key] <= spec[1]):
            error = spec[1] if op == "fail" else f"flaky {key!r} attempt {self._attempts[key]}"
        else:
            value = (1 + sum(data[d] for d in deps)) % MODULUS
        if (address, key) in self.running:
            raise AssertionError(f"{address} executes {key!r} twice at once")
        self.running[(address, key)] = _Running(address, key, self.now, value, error)

    def _finish_execution(self, run: _Running) -> None:
        address = run.worker
        if run.error is not None:
            event: we.WorkerEvent = we.ExecuteFailure(
                self.now,
                run.key,
                b"exception:" + run.error.encode(),
                b"traceback",
                f"RuntimeError: {run.error}",
                "Traceback (simulated)",
                run.start,
                self.now,
            )
        else:
            self.data[address][run.key] = run.value
            event = we.ExecuteSuccess(
                self.now,
                run.key,
                self.nbytes(run.key, run.value),
                type(run.value).__name__,
                run.start,
                self.now,
            )
        self._worker_handle(address, event)

    def _serve(self, fetch: _Fetch) -> None:
        """The peer answers a fetch with what it has right now."""
        fetcher, peer = fetch.fetcher, fetch.peer
        if fetch.done:
            return
        if fetcher not in self.workers:
            self._fetch_over(fetch)
            return
        if peer not in self.workers:
            self._fetch_over(fetch)
            self._worker_handle(fetcher, we.GatherDepDone(self.now, peer, {}, [], failed=True))
            return
        if self.serve_limit is not None and self.serving[peer] >= self.serve_limit:
            self.busy_answers += 1
            self._send((peer, fetcher, "data"), lambda: self._receive_busy(fetch))
            return
        self.serving[peer] += 1
        store = self.data[peer]
        values = {k: store[k] for k in fetch.keys if k in store}
        missing = [k for k in fetch.keys if k not in store]
        self._send((peer, fetcher, "data"), lambda: self._receive(fetch, values, missing))

    def _receive_busy(self, fetch: _Fetch) -> None:
        if fetch.done:
            return
        self._fetch_over(fetch)
        if fetch.fetcher in self.workers:
            done = we.GatherDepDone(self.now, fetch.peer, {}, busy=True)
            self._worker_handle(fetch.fetcher, done)

    def _retry(self, address: str, peer: str) -> Callable[[], None]:
        def retry() -> None:
            if address in self.workers:
                self._worker_handle(address, we.RetryBusyWorkerEvent(self.now, peer))

        return retry

    def _receive(self, fetch: _Fetch, values: dict[Key, Any], missing: list[Key]) -> None:
        self.serving[fetch.peer] -= 1  # the reply is out of the peer's hands
        if fetch.done:
            return  # the fetcher gave up on it
        self._fetch_over(fetch)
        fetcher = fetch.fetcher
        if fetcher not in self.workers:
            return
        self.data[fetcher].update(values)
        sizes = {k: self.nbytes(k, v) for k, v in values.items()}
        self._worker_handle(fetcher, we.GatherDepDone(self.now, fetch.peer, sizes, missing))


def _worker_event_factory(instr: si.ToWorker) -> Callable[[float], we.WorkerEvent]:
    if isinstance(instr, si.ComputeTask):
        i = instr
        return lambda now: we.ComputeTaskEvent(
            now,
            i.key,
            i.run_spec,
            i.priority,
            dict(i.who_has),
            dict(i.nbytes),
            i.duration,
            i.run_id,
        )
    if isinstance(instr, si.FreeKeys):
        keys = list(instr.keys)
        return lambda now: we.FreeKeysEvent(now, keys)
    if isinstance(instr, si.RefreshWhoHas):
        who_has = dict(instr.who_has)
        return lambda now: we.RefreshWhoHasEvent(now, who_has)
    raise TypeError(f"unexpected scheduler instruction {instr!r}")


def _scheduler_event_factory(
    address: str, instr: we.WorkerInstruction
) -> Callable[[float], ev.SchedulerEvent]:
    if isinstance(instr, we.TaskFinishedMsg):
        f = instr
        return lambda now: ev.TaskFinished(
            now, address, f.key, f.nbytes, f.type, f.start, f.stop, f.run_id
        )
    if isinstance(instr, we.TaskErredMsg):
        e = instr
        return lambda now: ev.TaskErred(
            now,
            address,
            e.key,
            e.exception,
            e.traceback,
            e.exception_text,
            e.traceback_text,
            e.start,
            e.stop,
            e.run_id,
        )
    if isinstance(instr, we.AddKeysMsg):
        keys = dict(instr.keys)
        return lambda now: ev.WorkerAddKeys(now, address, keys)
    if isinstance(instr, we.MissingDataMsg):
        m = instr
        return lambda now: ev.MissingData(now, address, m.key, m.errant_worker)
    raise TypeError(f"unexpected worker instruction {instr!r}")
