"""The worker server: an asyncio shell around :class:`conveyor.core.WorkerState`.

It keeps the data, runs tasks on a thread pool, fetches dependencies from peers and
serves its own data to peers and clients. The state machine decides; this executes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from conveyor import config
from conveyor.comm import Listener, connect, get_address_host, listen
from conveyor.comm.security import Security, as_security, default_protocol
from conveyor.core import worker_events as we
from conveyor.core.types import Key
from conveyor.core.worker import WorkerState
from conveyor.protocol import FunctionStore, loads, pickle_bytes
from conveyor.protocol.messages import worker_event_from_msg, worker_instruction_to_msg
from conveyor.rpc import Handler, Msg, Peer, PeerPool, read_scheduler_file, serve_peer
from conveyor.rpc.context import current_task
from conveyor.rpc.data import INLINE_RESULT_BYTES, unpack_data
from conveyor.rpc.sizes import nbytes
from conveyor.rpc.threads import run_in_thread
from conveyor.server.actors import ActorHost
from conveyor.server.addresses import listen_address
from conveyor.server.admission import NANNY_SECRET_ENV, matches, presented, refuse
from conveyor.server.data_serving import DataServer, is_busy
from conveyor.server.execute import Outcome, warm_imports
from conveyor.server.lifecycle import Server
from conveyor.server.logs import logs_reply, process_logs
from conveyor.server.plugin import WorkerPlugin
from conveyor.server.preload import make_preloads
from conveyor.server.resources import parse_resources
from conveyor.server.runner import TaskRunner
from conveyor.server.running_file import RunningFile
from conveyor.server.spill import SpillBuffer
from conveyor.server.worker_control import WorkerControl
from conveyor.server.worker_memory import WorkerMemory

logger = logging.getLogger("conveyor.worker")


def get_worker() -> Worker:
    """The worker running the calling task. ValueError outside a task."""
    ctx = current_task()
    if ctx is None or ctx.key is None or not isinstance(ctx.worker, Worker):
        raise ValueError("get_worker() works only inside a task running on a worker")
    return ctx.worker


#: bytes per second below which a transfer is taken for stuck
SLOWEST_TRANSFER = 10_000_000
#: exit status of a worker process that lost its scheduler or was dropped by it: its
#: nanny replaces it if the scheduler still answers
EXIT_REPLACE = 3
#: seconds a connection waits for the worker's registration (its token) to be done
ADMISSION_WAIT = 10.0


class Worker(Server):
    """A worker: runs tasks with ``nthreads`` threads and keeps their results.

    ``async with Worker(scheduler.address) as w:`` runs one in-process;
    ``conveyor worker ADDRESS`` runs one from the command line. ``plugins``
    (:class:`~conveyor.WorkerPlugin` instances) are set up when it starts, before it
    registers: a ``setup`` that raises stops the start.
    """

    def __init__(
        self,
        scheduler_address: str | None = None,
        *,
        scheduler_file: str | None = None,
        nthreads: int | None = None,
        name: str | int | None = None,
        memory_limit: int | float | str | None = "auto",
        host: str | None = None,
        port: int | None = 0,
        interface: str | None = None,
        protocol: str | None = None,
        local_directory: str | None = None,
        heartbeat_interval: float | str | None = None,
        validate: bool | None = None,
        resources: dict[str, float] | str | None = None,
        nanny: str | None = None,
        running_file: str | None = None,
        preload: str | Sequence[str] | None = None,
        preload_argv: Sequence[Any] | None = None,
        plugins: Iterable[WorkerPlugin] = (),
        security: Security | None = None,
    ) -> None:
        if scheduler_address is None and scheduler_file is None:
            raise ValueError("Worker needs a scheduler address or a scheduler_file")
        #: TLS credentials and policy (``conveyor.comm.tls.*`` when not given)
        self.security = as_security(security, "Worker")
        #: the cluster token peers must show (given by the scheduler at registration),
        #: and the secret this worker's nanny gave it (server/admission.py)
        self.cluster_token: str | None = None
        self._nanny_secret = os.environ.pop(NANNY_SECRET_ENV, None)
        self._token_known: asyncio.Event | None = None
        #: plugins given here, set up at start (before the worker registers)
        self._initial_plugins = list(plugins)
        for plugin in self._initial_plugins:
            if not isinstance(plugin, WorkerPlugin):
                raise TypeError(f"{plugin!r} is not a conveyor WorkerPlugin")
        #: amounts of abstract resources this worker offers to tasks that need them
        #: (``{"GPU": 2}``); default: the ``worker.resources`` configuration
        self.resources = parse_resources(
            config.get("worker.resources", None) if resources is None else resources
        )
        self._scheduler_address = scheduler_address
        self.scheduler_file = scheduler_file
        #: the operator's modules run at start and close (imported now: errors show here)
        self.preloads = make_preloads(preload, preload_argv)
        #: the address of the nanny that runs this worker process, if one does
        self.nanny = nanny
        #: the file, shared with the nanny, where task threads note what they run
        self._running_path = running_file
        self._running: RunningFile | None = None
        #: what ``conveyor worker`` exits with once this worker closed: 0 when it was
        #: closed on purpose, EXIT_REPLACE when it should be replaced (by its nanny)
        self.exit_code = 0
        self.nthreads = nthreads or config.cpu_count()
        self.name = name
        self.memory_limit = config.memory_limit(memory_limit) or 0
        self.local_directory = local_directory
        if protocol is None:  # the scheduler's, or TLS when there are credentials for it
            protocol = (
                scheduler_address.split("://")[0]
                if scheduler_address and "://" in scheduler_address
                else default_protocol(self.security, "worker")
            )
        if host is None and protocol != "inproc" and scheduler_address:
            host = get_address_host(scheduler_address)
        self._listen_at = listen_address(protocol, host, port, interface)
        self.heartbeat_interval = config.parse_duration(
            config.get("worker.heartbeat-interval")
            if heartbeat_interval is None
            else heartbeat_interval
        )
        self.validate = bool(config.get("scheduler.validate") if validate is None else validate)
        self.id = f"Worker-{uuid.uuid4()}"
        #: memory limit and spilling; ``data`` is its mapping (in memory, and on disk)
        self.memory = WorkerMemory(self.memory_limit, local_directory)
        self.data: SpillBuffer = self.memory.data
        #: answers ``get-data``, serving at most ``worker.connections.incoming`` peers
        self.data_server = DataServer(
            self.data, self._known_size, int(config.get("worker.connections.incoming"))
        )
        #: bytes of data fetched from peers so far (in heartbeats, for the dashboard)
        self.transfer_incoming_bytes = 0
        #: functions the scheduler sent, shared by the tasks that call them
        self.functions = FunctionStore()
        self.address = ""
        self.status = "created"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.state: WorkerState | None = None
        #: the threads running tasks (made on start, when the loop is known)
        self.runner: TaskRunner | None = None
        self.scheduler: Peer | None = None
        #: the client tasks here use (``get_client()``), made by the first that asks
        self.client: Any = None
        #: tasks holding inputs read back from disk for them, until they end or secede
        #: (at most nthreads + 1: see _execute_after_loading)
        self._unspilled: set[Key] = set()
        self._unspill_slots: asyncio.Semaphore | None = None
        #: seceded tasks waiting to rejoin, by key: set once a thread is theirs again
        self._rejoining: dict[Key, threading.Event] = {}
        self._listener: Listener | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = asyncio.Event()
        self._handlers: dict[str, Handler] = {
            "get-data": self.data_server.get_data,
            "update-data": self._update_data,
            "identity": lambda p, m: {"type": "Worker", "id": self.id, "address": self.address},
            "get-logs": lambda p, m: logs_reply(m),
        }
        # peers are workers, which listen from start to end: one that refuses a
        # connection is gone (killed, say), and retrying for the whole connect timeout
        # would hold up every transfer from it (and a task the scheduler moved here
        # while its transfer waited) that long
        self.pool = PeerPool(
            "worker",
            {},
            config.parse_duration(config.get("comm.timeouts.connect")) or 30.0,
            retry_refused=False,
            connection_args=self.security.get_connection_args("worker"),
        )
        #: seconds a peer may take to answer a request (plus time for the bytes to
        #: arrive at SLOWEST_TRANSFER), after which it is taken for stuck
        self._tcp_timeout = config.parse_duration(config.get("comm.timeouts.tcp")) or 30.0
        self._scheduler_handlers: dict[str, Handler] = {
            "compute-task": self._from_scheduler,
            "free-keys": self._from_scheduler,
            "refresh-who-has": self._from_scheduler,
            "acquire-replicas": self._from_scheduler,
            "free-functions": self._free_functions,
            "sync-memory": self._sync_memory,
            "close": self._close_requested,
        }
        #: method calls and attribute reads of the actors held here
        self.actors = ActorHost(self)
        self._handlers.update(self.actors.handlers())
        #: Client.run, worker plugins and uploaded files (see worker_control.py)
        self.control = WorkerControl(self)
        process_logs()  # its log lines, for Client.get_worker_logs

    def __repr__(self) -> str:
        return f"<Worker {self.address or 'not started'} name={self.name!r} status={self.status}>"

    @property
    def plugins(self) -> dict[str, Any]:
        """Worker plugins installed here, by name."""
        return self.control.plugins

    @property
    def scheduler_address(self) -> str:
        """Address of the scheduler this worker reports to."""
        return self._scheduler_address or ""

    # --------------------------------------------------------------- lifecycle

    async def start(self) -> Worker:
        """Listen, register with the scheduler and start serving; idempotent."""
        if self.status == "running":
            return self
        self.loop = asyncio.get_running_loop()
        timeout = config.parse_duration(config.get("comm.timeouts.connect")) or 30.0
        if self._scheduler_address is None:
            assert self.scheduler_file is not None
            self._scheduler_address = await run_in_thread(
                read_scheduler_file, self.scheduler_file, timeout
            )
        # ready before the first task: a transfer of an array must not import numpy
        await run_in_thread(warm_imports, list(config.get("worker.warm-imports") or []))
        self._token_known = asyncio.Event()
        self._listener = listen(
            self._listen_at,
            self._handle_comm,
            role="worker",
            **self.security.get_listen_args("worker"),
        )
        await self._listener.start()
        self.address = self._listener.contact_address
        if self.name is None:
            self.name = self.address
        self.state = WorkerState(
            self.address,
            self.nthreads,
            transfer_message_bytes_limit=config.parse_size(
                config.get("worker.transfer.message-bytes-limit")
            )
            or 50_000_000,
            outgoing_connections=int(config.get("worker.connections.outgoing")),
            validate=self.validate,
            resources=self.resources,
        )
        # made just before registering: tasks come after, and a failure closes it
        if self._running_path is not None:  # room for threads of seceded tasks too
            self._running = RunningFile(self._running_path, max(64, 4 * self.nthreads))
            self._running.set_address(self.address)
        self._unspill_slots = asyncio.Semaphore(self.nthreads + 1)
        self.runner = TaskRunner(
            self.nthreads,
            self.loop,
            self.functions,
            self._executed,
            owner=self,
            record=self._running,
        )
        # running before the reply comes: tasks (and plugins) may arrive ahead of it
        self.status = "running"
        try:
            self.control.plugins_changed()  # a plugin may have come before the state
            for plugin in self._initial_plugins:  # before any task can arrive
                await self.control.install(plugin)
            await self._register(timeout)
        except BaseException:
            await self.close("failed to register")
            raise
        self._spawn(self._heartbeat_loop())
        self._spawn(self.memory.monitor(self.apply, lambda: self.status == "running"))
        if self.nanny is not None:
            await self._report_to_nanny(self.nanny, timeout)
        for preload in self.preloads:
            await preload.setup(self)
        logger.info("Worker started at %s, registered to %s", self.address, self.scheduler_address)
        return self

    async def _register(self, timeout: float) -> None:
        comm = await connect(
            self.scheduler_address,
            timeout,
            role="worker",
            **self.security.get_connection_args("worker"),
        )
        self.scheduler = Peer(comm, asyncio.get_running_loop())
        self._spawn(self._serve_scheduler(self.scheduler))
        reply = await self.scheduler.request(
            {
                "op": "register-worker",
                "address": self.address,
                "name": self.name,
                "nthreads": self.nthreads,
                "memory_limit": self.memory_limit,
                "host": get_address_host(self.address) if "://" in self.address else "",
                "keys": {},
                "resources": self.resources,
                "nanny": self.nanny,
            }
        )
        self.cluster_token = str(reply["token"])
        # peers check the token this worker shows them, as it checks theirs
        self.pool.connection_args["handshake_extra"] = {"token": self.cluster_token}
        if self._token_known is not None:
            self._token_known.set()

    async def _report_to_nanny(self, address: str, timeout: float) -> None:
        """Tell the nanny this worker is up, and close when the nanny goes away."""
        comm = await connect(
            address,
            timeout,
            role="worker",
            handshake_extra={"token": self._nanny_secret or ""},
            **self.security.get_connection_args("worker"),
        )
        peer = Peer(comm, asyncio.get_running_loop())
        peer.send(
            {
                "op": "worker-up",
                "address": self.address,
                "pid": os.getpid(),
                "token": self.cluster_token,  # the nanny serves the cluster's peers too
            }
        )

        async def watch() -> None:
            await serve_peer(peer, {})
            if self.status == "running":
                logger.warning("Connection to nanny %s closed: closing worker", address)
                self._spawn(self.close("nanny connection closed"))

        self._spawn(watch())

    async def close(self, reason: str = "worker-close") -> None:
        """Leave the scheduler, stop serving, drop the data and the threads."""
        if self.status in ("closing", "closed"):
            await self._closed.wait()
            return
        self.status = "closing"
        for preload in self.preloads:
            try:
                await preload.teardown(self)
            except Exception:
                logger.exception("Tearing down preload %r failed", preload.name)
        await self.control.close()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        if self._listener is not None:
            self._listener.stop()
        await self.pool.close()
        if self.scheduler is not None:
            # closing on purpose: nothing it was running is to blame
            self.scheduler.send({"op": "unregister", "reason": reason})
            await self.scheduler.close()
        if self.runner is not None:
            self.runner.close()
        self.actors.close()
        self.data.close()  # the spill directory too
        for waiting in self._rejoining.values():
            waiting.set()  # the worker is gone: a rejoining task goes on, and its result too
        if self.client is not None:
            # a synchronous client: closed from a thread, as it may share this loop
            with contextlib.suppress(Exception):
                await run_in_thread(self.client.close)
            self.client = None
        self.status = "closed"
        self._closed.set()
        logger.info("Worker %s closed (%s)", self.address, reason)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_scheduler(self, peer: Peer) -> None:
        await serve_peer(peer, self._scheduler_handlers)
        if self.status == "running":
            logger.info("Connection to scheduler %s closed: closing worker", self.scheduler_address)
            self.exit_code = EXIT_REPLACE
            self._spawn(self.close("scheduler connection closed"))

    def _sync_memory(self, peer: Peer, msg: Msg) -> None:
        """Answer the scheduler's reconciliation (``conveyor.core.housekeeping``): of
        the keys it believes are held here, those that are not; of the keys held here,
        those it did not name."""
        named = set(msg.get("keys") or ())
        held = self.data
        missing = [key for key in named if key not in held]
        extra = [key for key in held if key not in named]
        if missing:  # lost here: this worker's state forgets them too, to run them again
            self.apply(we.FreeKeysEvent(time.time(), missing))
        peer.send({"op": "memory-synced", "missing": missing, "extra": extra})

    def _close_requested(self, peer: Peer, msg: Msg) -> None:
        reason = str(msg.get("reason") or "the scheduler asked")
        if reason.startswith("removed"):  # dropped (silent too long), not retired
            self.exit_code = EXIT_REPLACE
        self._spawn(self.close(reason))

    async def _heartbeat_loop(self) -> None:
        interval = self.heartbeat_interval or 1.0
        while self.scheduler is not None and not self.scheduler.closed:
            await asyncio.sleep(interval)
            self.scheduler.send({"op": "heartbeat-worker", "metrics": self._metrics()})

    def _metrics(self) -> dict[str, Any]:
        st = self.state
        return {
            "executing": len(st.executing_keys) if st else 0,
            "ready": len(st.ready) if st else 0,
            "in_memory": len(self.data),
            "in_flight": len(st.in_flight_workers) if st else 0,
            "memory": self.memory.usage(),
            "transfer_incoming_bytes": self.transfer_incoming_bytes,
        }

    # ------------------------------------------------------------ state machine

    def _free_functions(self, peer: Peer, msg: Msg) -> None:
        for fid in msg["ids"]:
            self.functions.discard(fid)

    def _from_scheduler(self, peer: Peer, msg: Msg) -> None:
        blobs = msg.get("blobs")
        if blobs:
            for fid, blob in blobs.items():
                self.functions.add(fid, blob)
        self.apply(worker_event_from_msg(msg, time.time()))
        if msg["op"] == "free-keys" and self.state is not None:
            # data this worker's state does not know (leaked: found by the scheduler's
            # reconciliation) has no task to release it: drop it here
            for key in msg["keys"]:
                if key not in self.state.tasks:
                    self.data.discard(key)

    def apply(self, event: we.WorkerEvent) -> None:
        """Hand one event to the state machine and carry out its instructions.

        If the state machine raises, nothing it produced for the event is carried out
        and the exception propagates to the caller: ``serve_peer`` closes the connection
        whose message caused it, the task runner reports the task as failed.
        """
        if self.state is None or self.status != "running":
            return
        for instr in self.state.handle(event):
            kind = type(instr)
            if kind is we.Execute:
                self._execute(instr.key)  # type: ignore[union-attr]
            elif kind is we.GatherDep:
                self._spawn(self._gather_dep(instr))  # type: ignore[arg-type]
            elif kind is we.RetryBusyWorkerLater:
                self._retry_later(instr)  # type: ignore[arg-type]
            elif kind is we.DeleteData:
                for key in instr.keys:  # type: ignore[union-attr]
                    self.data.discard(key)
            elif kind is we.Rejoined:
                granted = self._rejoining.pop(instr.key, None)  # type: ignore[union-attr]
                if granted is not None:
                    granted.set()
            elif self.scheduler is not None:
                msg = worker_instruction_to_msg(instr)
                if kind is we.TaskFinishedMsg:
                    self._attach_small_result(instr.key, msg)  # type: ignore[union-attr]
                self.scheduler.send(msg)

    # --------------------------------------------------------------- secession

    def secede_task(self, key: Key) -> None:
        """From a task thread: the task ``key`` leaves the thread budget (another thread
        takes its place) and becomes long-running."""
        assert self.runner is not None and self.loop is not None
        self.runner.secede_current()
        self.loop.call_soon_threadsafe(self._seceded, key)

    def _seceded(self, key: Key) -> None:
        self._unspill_done(key)  # waiting on other tasks, it must not hold an unspill slot
        self.apply(we.SecedeEvent(time.time(), key))

    def rejoin_task(self, key: Key) -> None:
        """From a seceded task's thread: wait until the worker has a thread for it."""
        assert self.loop is not None
        granted = threading.Event()
        self.loop.call_soon_threadsafe(self._ask_rejoin, key, granted)
        granted.wait()

    def _ask_rejoin(self, key: Key, granted: threading.Event) -> None:
        if self.status != "running":
            granted.set()
            return
        self._rejoining[key] = granted
        self.apply(we.RejoinEvent(time.time(), key))

    def _attach_small_result(self, key: Key, msg: Msg) -> None:
        """Send a small result that a client waits for along with its completion."""
        assert self.state is not None
        ts = self.state.tasks.get(key)
        if ts is None or not ts.inline or key not in self.data:
            return
        value = self.data[key]
        # in band: a batch of thousands of completions must not become thousands of frames
        with contextlib.suppress(Exception):  # unpicklable: the client fetches it instead
            if (ts.nbytes if ts.nbytes >= 0 else nbytes(value)) <= INLINE_RESULT_BYTES:
                msg["result"] = pickle_bytes(value)

    def _execute(self, key: Key) -> None:
        assert self.state is not None and self.loop is not None
        ts = self.state.tasks[key]
        if ts.dependencies and self.data.spilled(d.key for d in ts.dependencies):
            self._spawn(self._execute_after_loading(key))
            return
        self._submit(key)

    async def _execute_after_loading(self, key: Key) -> None:
        """Read spilled dependencies back (off the loop), then run the task.

        Tasks handed to the threads ahead of time (prefetched) would all read their
        inputs back at once: at most ``nthreads + 1`` tasks hold inputs read back for
        them until they end (or secede), the rest wait for a slot, in the order they
        were started."""
        assert self._unspill_slots is not None
        await self._unspill_slots.acquire()
        self._unspilled.add(key)
        ts = self.state.tasks.get(key) if self.state is not None else None
        try:
            if ts is not None and ts.state in ("executing", "long-running"):
                await self.data.load([d.key for d in ts.dependencies])
        except Exception as e:  # a spill file gone bad: the task fails, clearly
            self._unspill_done(key)
            text = f"{type(e).__name__}: could not read a spilled dependency: {e}"
            self._not_run(key, text)
            return
        except BaseException:
            self._unspill_done(key)
            raise
        ts = self.state.tasks.get(key) if self.state is not None else None
        if ts is not None and ts.state in ("executing", "long-running") and self._submit(key):
            return  # its slot is given back with its outcome (_executed)
        self._unspill_done(key)
        if ts is not None and ts.state == "cancelled":  # freed while it waited: its
            self._not_run(key, "cancelled before it ran")  # thread slot is free again

    def _unspill_done(self, key: Key) -> None:
        if key in self._unspilled:
            self._unspilled.discard(key)
            assert self._unspill_slots is not None
            self._unspill_slots.release()

    def _not_run(self, key: Key, text: str) -> None:
        now = time.time()
        self.apply(we.ExecuteFailure(now, key, None, None, text, "", now, now))

    def _submit(self, key: Key) -> bool:
        """Hand ``key`` to the threads with its dependencies' values; False (and the
        task failed) if one is missing."""
        assert self.state is not None
        ts = self.state.tasks[key]
        try:
            deps = {d.key: self.data[d.key] for d in ts.dependencies}
        except KeyError as e:
            missing = f"dependency {e.args[0]!r} of {key!r} is not on this worker"
            self._not_run(key, f"KeyError: {missing}")
            return False
        assert self.runner is not None
        self.runner.submit(key, ts.run_spec, deps)
        return True

    def _executed(self, key: Key, outcome: Outcome) -> None:
        if self._unspilled:
            self._unspill_done(key)
        now = time.time()
        if outcome.ok:
            self.data.put(key, outcome.value, outcome.nbytes)
            if self.memory.pause_bytes is not None:
                self.memory.stored(self.apply)
            event: we.WorkerEvent = we.ExecuteSuccess(
                now, key, outcome.nbytes, outcome.type, outcome.start, outcome.stop
            )
        else:
            event = we.ExecuteFailure(
                now,
                key,
                outcome.exception,
                outcome.traceback,
                outcome.exception_text,
                outcome.traceback_text,
                outcome.start,
                outcome.stop,
            )
        self.apply(event)

    # ------------------------------------------------------------------ data

    async def _gather_dep(self, instr: we.GatherDep) -> None:
        received: dict[Key, int] = {}
        missing: list[Key] = []
        failed = busy = False
        try:
            peer = await self.pool.get(instr.worker)
            # a stopped peer must not hold the keys forever: past this, fetch elsewhere
            timeout = self._tcp_timeout + max(instr.total_nbytes, 0) / SLOWEST_TRANSFER
            msg = {"op": "get-data", "keys": instr.keys, "who": self.address}
            reply = await peer.request(msg, timeout)
            busy = is_busy(reply)
            if not busy:
                values, received, missing = unpack_data(reply)
                for k, value in values.items():
                    self.data.put(k, value, received.get(k, 0))
                self.transfer_incoming_bytes += sum(received.values())
        except (TimeoutError, OSError) as e:
            logger.info("Could not fetch %d keys from %s: %s", len(instr.keys), instr.worker, e)
            failed = True
        except Exception:
            logger.exception("Fetching %d keys from %s failed", len(instr.keys), instr.worker)
            failed = True
        self.apply(we.GatherDepDone(time.time(), instr.worker, received, missing, failed, busy))

    def _retry_later(self, instr: we.RetryBusyWorkerLater) -> None:
        assert self.loop is not None
        worker = instr.worker
        self.loop.call_later(
            instr.delay, lambda: self.apply(we.RetryBusyWorkerEvent(time.time(), worker))
        )

    def _known_size(self, key: Key) -> int | None:
        ts = self.state.tasks.get(key) if self.state is not None else None
        return ts.nbytes if ts is not None else None

    def _update_data(self, peer: Peer, msg: Msg) -> dict[str, Any]:
        sizes: dict[Key, int] = {}
        for key, ser in msg["data"].items():
            self.data.put(key, loads(ser), ser.nbytes)
            sizes[key] = ser.nbytes
        self.apply(we.UpdateDataEvent(time.time(), sizes))
        return {"nbytes": sizes}

    async def _handle_comm(self, comm: Any) -> None:
        if not await self._admits(comm):
            refuse(comm, f"Worker {self.address}")
            return
        peer = Peer(comm, asyncio.get_running_loop())
        await serve_peer(peer, self._handlers)

    async def _admits(self, comm: Any) -> bool:
        """Whether ``comm``'s peer showed the cluster token. A peer may learn of this
        worker from the scheduler before the registration's reply (with the token)
        reached it: wait for that reply a while."""
        if self.cluster_token is None and self._token_known is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._token_known.wait(), ADMISSION_WAIT)
        return matches(presented(comm), self.cluster_token)
