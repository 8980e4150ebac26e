"""The scheduler server: an asyncio shell around :class:`conveyor.core.SchedulerState`.

It accepts connections from workers and clients, turns their messages into events,
hands them to the state machine and sends out the instructions it returns. It never
unpickles anything a peer sends.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from conveyor import config
from conveyor.comm import Listener, listen
from conveyor.comm.security import Security, as_security, default_protocol
from conveyor.core import events as se
from conveyor.core.control import OPERATOR_FINISHES
from conveyor.core.housekeeping import TaskDurations
from conveyor.core.instructions import CloseWorker, KeyErred, KeyInMemory, ToWorker
from conveyor.core.records import ClientInfo, TaskState, WorkerInfo
from conveyor.core.replicas import workers_to_close as plan_workers_to_close
from conveyor.core.scheduler import SchedulerState
from conveyor.protocol.messages import (
    CLIENT_STREAM_OPS,
    WORKER_STREAM_OPS,
    resource_amounts,
    scheduler_instruction_to_msg,
)
from conveyor.rpc import (
    EventFailed,
    Handler,
    Msg,
    Peer,
    ProtocolViolation,
    serve_peer,
    write_scheduler_file,
)
from conveyor.rpc.gcpause import BurstFreezer, gc_paused
from conveyor.rpc.outgoing import outgoing_limit
from conveyor.server.addresses import exposure_warning, listen_address
from conveyor.server.extensions import DEFAULT_EXTENSIONS
from conveyor.server.housekeeping import (
    forget_prefixes_loop,
    logged_sync_answers,
    sync_workers_loop,
)
from conveyor.server.lifecycle import Server
from conveyor.server.plugin import SchedulerPlugin, overrides, plugin_name
from conveyor.server.preload import make_preloads
from conveyor.server.services import parse_services, start_service, stop_service

logger = logging.getLogger("conveyor.scheduler")

#: the pseudo-client that wants fired-and-forgotten keys until they settle
FIRE_AND_FORGET = "fire-and-forget"


def _refuse_unsupported(jupyter: bool) -> None:
    """distributed's keywords whose features conveyor does not have: their default (off)
    is accepted, anything else is refused with what is missing."""
    if jupyter:
        raise NotImplementedError("jupyter=True: conveyor serves no Jupyter server")


def _blocked(op: str) -> Handler:
    def refuse(peer: Peer, msg: Msg) -> None:
        raise PermissionError(f"{op!r} is blocked on this scheduler (blocked_handlers)")

    return refuse


class Scheduler(Server):
    """The central scheduler server.

    ``async with Scheduler(port=0) as s:`` runs one in-process; ``conveyor scheduler``
    runs one from the command line. Durations accept numbers or strings such as "2s".
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = 0,
        interface: str | None = None,
        protocol: str | None = None,
        scheduler_file: str | None = None,
        validate: bool | None = None,
        allowed_failures: int | None = None,
        worker_ttl: float | str | None = None,
        idle_timeout: float | str | None = None,
        dashboard_address: str | None = None,
        dashboard: bool | None = None,
        http_prefix: str = "/",
        plugins: Iterable[SchedulerPlugin] = (),
        extensions: Mapping[str, Callable[[Scheduler], Any]] | None = None,
        allow_remote_code: bool | None = None,
        preload: str | Sequence[str] | None = None,
        preload_argv: Sequence[Any] | None = None,
        blocked_handlers: Iterable[str] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        services: Mapping[Any, Any] | None = None,
        service_kwargs: Mapping[Any, Any] | None = None,
        security: Security | None = None,
        jupyter: bool = False,
        delete_interval: float | str | None = None,
        synchronize_worker_interval: float | str | None = None,
    ) -> None:
        _refuse_unsupported(jupyter)
        #: TLS credentials and policy (``conveyor.comm.tls.*`` when not given)
        self.security = as_security(security, "Scheduler")
        if protocol is None:  # TLS when there are credentials for it
            protocol = default_protocol(self.security, "scheduler")
        #: extra services started with the scheduler (see conveyor.server.services)
        self._service_specs = parse_services(services, service_kwargs)
        #: how often empty task prefixes are forgotten, and workers' memory reconciled
        self.delete_interval = config.parse_duration(
            config.get("scheduler.delete-interval") if delete_interval is None else delete_interval
        )
        self.synchronize_worker_interval = config.parse_duration(
            config.get("scheduler.synchronize-worker-interval")
            if synchronize_worker_interval is None
            else synchronize_worker_interval
        )
        #: the loop it must run on (start() refuses another); None: the running one
        self._required_loop = loop
        #: requests this scheduler refuses (operator's choice)
        self.blocked_handlers = sorted(set(blocked_handlers or ()))
        self._listen_at = listen_address(protocol, host, port, interface)
        #: the operator's modules run at start and close (imported now: errors show here)
        self.preloads = make_preloads(preload, preload_argv)
        self.scheduler_file = scheduler_file
        #: where the dashboard listens ("host:port"; no host: 127.0.0.1), and whether
        #: it is served (``dashboard=None``: ``scheduler.dashboard.enabled``)
        self.dashboard_address = str(
            dashboard_address or config.get("scheduler.dashboard.address") or ":8787"
        )
        self.dashboard_enabled = bool(
            config.get("scheduler.dashboard.enabled") if dashboard is None else dashboard
        )
        self.http_prefix = http_prefix
        self.validate = bool(config.get("scheduler.validate") if validate is None else validate)
        #: run code clients send (run_on_scheduler, scheduler plugins): see remote_code.py
        self.allow_remote_code = bool(
            config.get("scheduler.allow-remote-code")
            if allow_remote_code is None
            else allow_remote_code
        )
        if allowed_failures is None:
            allowed_failures = int(config.get("scheduler.allowed-failures"))
        self.allowed_failures = allowed_failures
        self.worker_ttl = config.parse_duration(
            config.get("scheduler.worker-ttl") if worker_ttl is None else worker_ttl
        )
        self.idle_timeout = config.parse_duration(
            config.get("scheduler.idle-timeout") if idle_timeout is None else idle_timeout
        )
        self.id = f"Scheduler-{uuid.uuid4()}"
        #: what workers and nannies ask of a peer before serving it (see
        #: ``server/admission.py``): given to every worker and client that registers
        self.cluster_token = secrets.token_urlsafe(32)
        self.state = SchedulerState(
            allowed_failures=allowed_failures,
            validate=self.validate,
            worker_ttl=self.worker_ttl,
            transition_log_length=int(config.get("scheduler.transition-log-length")),
            unknown_task_duration=config.parse_duration(
                config.get("scheduler.unknown-task-duration")
            )
            or 0.5,
            default_task_durations={
                k: config.parse_duration(v) or 0.0
                for k, v in (config.get("scheduler.default-task-durations") or {}).items()
            },
            worker_saturation=float(config.get("scheduler.worker-saturation")),
            bandwidth=float(config.parse_size(config.get("scheduler.bandwidth")) or 100e6),
        )
        #: freezes the records large graph updates leave (in server processes only)
        self._gc = BurstFreezer()
        #: client id -> connection
        self.client_comms: dict[str, Peer] = {}
        #: worker address -> connection
        self.stream_comms: dict[str, Peer] = {}
        self.services: dict[str, Any] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.address = ""
        self.status = "created"
        self._listener: Listener | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = asyncio.Event()
        self._idle_since: float | None = None
        #: request and stream handlers by op; extensions add their own
        self.handlers: dict[str, Handler] = {
            "register-worker": self._register_worker,
            "register-client": self._register_client,
            "who-has": lambda p, m: self.state.who_has(m.get("keys")),
            "has-what": lambda p, m: self.state.has_what(m.get("workers")),
            "ncores": lambda p, m: self.state.nthreads(),
            "scheduler-info": lambda p, m: self.identity(),
            "identity": lambda p, m: self.identity(),
            "story": lambda p, m: [list(e) for e in self.state.story(*m["keys"])],
            "run-spec": lambda p, m: self.state.run_spec_of(m["key"], bool(m.get("blame"))),
            "fire-and-forget": self._fire_and_forget,
            "unregister": self._unregister_worker,
        }
        for op, make in WORKER_STREAM_OPS.items():
            self.handlers[op] = self._stream_handler("worker", make)
        self.handlers["memory-synced"] = logged_sync_answers(self, self.handlers["memory-synced"])
        for op, make in CLIENT_STREAM_OPS.items():
            self.handlers[op] = self._stream_handler("client", make)
        #: plugins by name, told of workers and clients coming and going
        self.plugins: dict[str, SchedulerPlugin] = {}
        for plugin in plugins:
            if not isinstance(plugin, SchedulerPlugin):
                raise TypeError(f"{plugin!r} is not a conveyor SchedulerPlugin")
            self.plugins[plugin_name(plugin)] = plugin
        #: extension objects by name (each made with ``ext(self)``)
        self.extensions: dict[str, Any] = {}
        chosen = DEFAULT_EXTENSIONS if extensions is None else extensions
        for ext_name, make_ext in chosen.items():
            self.extensions[ext_name] = make_ext(self)
        self._transition_listeners: list[SchedulerPlugin] = []
        for op in self.blocked_handlers:
            self.handlers[op] = _blocked(op)
        self._plugins_changed()

    # ------------------------------------------------------------- state views

    @property
    def tasks(self) -> dict[Any, TaskState]:
        """All tasks the scheduler knows, by key."""
        return self.state.tasks

    @property
    def workers(self) -> dict[str, WorkerInfo]:
        """Connected workers, by address."""
        return self.state.workers

    @property
    def clients(self) -> dict[str, ClientInfo]:
        """Connected clients, by id."""
        return self.state.clients

    @property
    def idle(self) -> dict[str, WorkerInfo]:
        """Workers running fewer tasks than they have threads."""
        return self.state.idle

    @property
    def saturated(self) -> set[WorkerInfo]:
        """Workers with more tasks than threads."""
        return self.state.saturated

    @property
    def unrunnable(self) -> set[TaskState]:
        """Tasks that no connected worker may run."""
        return self.state.unrunnable

    @property
    def host_info(self) -> dict[str, dict[str, Any]]:
        """Per host: worker addresses and thread count."""
        return self.state.host_info

    @property
    def task_duration(self) -> TaskDurations:
        """Expected run time per key prefix, in seconds, used for placement: learned
        from finished tasks, or set by an operator (``s.task_duration["load"] = 2.0``
        sets the current estimate and the default when the prefix is seen again)."""
        return self.state.task_duration

    @property
    def dashboard_link(self) -> str | None:
        """The dashboard's URL (``http://127.0.0.1:8787/``), or None when not served."""
        board = self.services.get("dashboard")
        return board.link if board is not None else None

    def service_ports(self) -> dict[str, int]:
        """The port of each HTTP service (``{"dashboard": 8787}``)."""
        return {name: svc.port for name, svc in self.services.items()}

    def identity(self) -> dict[str, Any]:
        """A summary of the scheduler and its workers (``Client.scheduler_info()``)."""
        return {
            "type": "Scheduler",
            "id": self.id,
            "address": self.address,
            "services": self.service_ports(),
            "workers": self.state.workers_info(),
        }

    def story(self, *keys: Any) -> list[tuple[Any, str, str, str, float]]:
        """What happened to these keys, from the transition log."""
        return self.state.story(*keys)

    def transition(
        self, key: Any, finish: str, stimulus_id: str | None = None, reason: str = ""
    ) -> str:
        """Move the task ``key`` to ``finish``, for operators: ``"released"`` drops what
        it holds and, if a client still wants it, runs it again; ``"erred"`` fails it
        (and its dependents) with ``reason``, wherever it is. ``stimulus_id`` names the
        move in ``story()``. Returns the task's state afterwards. KeyError for an
        unknown task, ValueError for another ``finish``."""
        if key not in self.state.tasks:
            raise KeyError(f"the scheduler has no task {key!r}")
        if finish not in OPERATOR_FINISHES:
            raise ValueError(f"finish must be one of {OPERATOR_FINISHES}, not {finish!r}")
        self.apply(se.OperatorTransition(time.time(), key, finish, reason, stimulus_id))
        ts = self.state.tasks.get(key)
        return "forgotten" if ts is None else ts.state

    def workers_to_close(
        self,
        n: int | None = None,
        memory_ratio: float | None = None,
        key: Callable[[WorkerInfo], Any] | None = None,
        minimum: int | None = None,
        target: int | None = None,
        attribute: str = "address",
    ) -> list[Any]:
        """Workers that can be retired cheaply: idle ones holding the least data, in
        groups by ``key(worker_info)`` (say the host); up to ``n``, or down to
        ``target`` workers, or (neither) as many as leave room for ``memory_ratio``
        (default 2) times the data held; never fewer than ``minimum`` left. Returns
        each one's ``attribute`` (``"address"``, ``"name"``, ...)."""
        chosen = plan_workers_to_close(self.state, n, target, memory_ratio, minimum or 0, key)
        for plugin in self._listening("valid_workers_downscaling"):
            allowed = {id(ws) for ws in plugin.valid_workers_downscaling(self, list(chosen))}
            chosen = [ws for ws in chosen if id(ws) in allowed]
        return [getattr(ws, attribute) for ws in chosen]

    async def retire_workers(
        self,
        workers: list[str] | None = None,
        names: list[Any] | None = None,
        close_workers: bool = True,
        *,
        n: int | None = None,
        target: int | None = None,
        memory_ratio: float | None = None,
        minimum: int | None = None,
        key: Callable[[WorkerInfo], Any] | None = None,
    ) -> dict[str, Any]:
        """Retire workers gracefully (see ``Client.retire_workers``); without
        ``workers`` or ``names``, those ``workers_to_close(n=, target=, memory_ratio=,
        minimum=, key=)`` picks (those keywords choose: they are refused beside
        ``workers`` or ``names``)."""
        choosing = {
            k: v
            for k, v in (
                ("n", n),
                ("target", target),
                ("memory_ratio", memory_ratio),
                ("minimum", minimum),
                ("key", key),
            )
            if v is not None
        }
        if choosing and (workers is not None or names is not None):
            raise TypeError(
                f"{sorted(choosing)} choose which workers to retire: pass them or "
                "workers/names, not both"
            )
        memory = self.extensions["memory"]
        msg = {"workers": workers, "names": names, "close_workers": close_workers, **choosing}
        result: dict[str, Any] = await memory.retire_workers(None, msg)
        return result

    # --------------------------------------------------------------- lifecycle

    async def start(self) -> Scheduler:
        """Listen and start periodic checks; idempotent."""
        if self.status == "running":
            return self
        running = asyncio.get_running_loop()
        if self._required_loop is not None and self._required_loop is not running:
            raise RuntimeError("Scheduler(loop=...) must be started on that loop")
        self.loop = running
        handshake_timeout = config.parse_duration(config.get("comm.timeouts.handshake")) or 10.0
        #: what may wait for a peer that stops reading before it is dropped
        self._max_outgoing = outgoing_limit()
        self._listener = listen(
            self._listen_at,
            self._handle_comm,
            role="scheduler",
            handshake_timeout=handshake_timeout,
            **self.security.get_listen_args("scheduler"),
        )
        await self._listener.start()
        self.address = self._listener.contact_address
        if self.dashboard_enabled:
            # imported here, not at the top: aiohttp and prometheus_client cost every
            # process that imports conveyor (workers, nannies, clients) about 170 ms
            from conveyor.server.dashboard import Dashboard

            board = Dashboard(self, self.dashboard_address, self.http_prefix)
            try:
                await board.start()
            except BaseException:
                self._listener.stop()
                raise
            self.services["dashboard"] = board
        for spec in self._service_specs:
            try:
                self.services[spec.name] = await start_service(spec, self, "127.0.0.1")
            except BaseException:
                self._listener.stop()
                await self._stop_services()
                raise
        if self.scheduler_file:
            write_scheduler_file(
                self.scheduler_file,
                {
                    "type": "Scheduler",
                    "id": self.id,
                    "address": self.address,
                    "services": self.service_ports(),
                },
            )
        self._spawn(self._tick_loop())
        if self.delete_interval:
            self._spawn(forget_prefixes_loop(self, self.delete_interval))
        if self.synchronize_worker_interval:
            self._spawn(sync_workers_loop(self, self.synchronize_worker_interval))
        self.status = "running"
        for plugin in list(self.plugins.values()):
            await self._start_plugin(plugin)
        for preload in self.preloads:
            await preload.setup(self)
        logger.info("Scheduler started at %s", self.address, extra={"address": self.address})
        exposed = exposure_warning(self._listen_at)
        if exposed:
            logger.warning(exposed)
        return self

    async def close(self) -> None:
        """Stop listening and drop every connection; workers then shut down."""
        if self.status in ("closing", "closed"):
            await self._closed.wait()
            return
        self.status = "closing"
        await self._call_plugins("before_close")
        if self._listener is not None:
            self._listener.stop()
        for preload in self.preloads:
            try:
                await preload.teardown(self)
            except Exception:
                logger.exception("Tearing down preload %r failed", preload.name)
        for plugin in list(self.plugins.values()):
            await self._close_plugin(plugin)
        await self._stop_services()
        for task in list(self._tasks):
            task.cancel()
        for peer in self.stream_comms.values():
            # closing on purpose: its worker (and nanny) should exit, not be replaced
            peer.send({"op": "close", "reason": "the scheduler is closing"})
        peers = list(self.stream_comms.values()) + list(self.client_comms.values())
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
        self.status = "closed"
        self._closed.set()
        logger.info("Scheduler at %s closed", self.address)

    async def _stop_services(self) -> None:
        while self.services:
            name, service = self.services.popitem()
            try:
                await stop_service(service)
            except Exception:
                logger.exception("Stopping service %r failed", name)

    # ----------------------------------------------------------------- plugins

    async def add_plugin(self, plugin: SchedulerPlugin, name: str | None = None) -> None:
        """Add ``plugin`` (replacing one of the same name); started at once if the
        scheduler is running."""
        if not isinstance(plugin, SchedulerPlugin):
            raise TypeError(f"{plugin!r} is not a conveyor SchedulerPlugin")
        name = name or plugin_name(plugin)
        old = self.plugins.pop(name, None)
        if old is not None and self.status == "running":
            await self._close_plugin(old)
        self.plugins[name] = plugin
        self._plugins_changed()
        if self.status == "running":
            await self._start_plugin(plugin)

    async def remove_plugin(self, name: str) -> None:
        """Remove the plugin called ``name`` (KeyError if there is none) and close it."""
        plugin = self.plugins.pop(name)
        self._plugins_changed()
        if self.status == "running":
            await self._close_plugin(plugin)

    def _graph_updated(self, event: se.UpdateGraph) -> None:
        """Tell the plugins that implement ``update_graph`` (only they cost a walk of
        the graph's keys)."""
        listeners = self._listening("update_graph")
        if not listeners:
            return
        tasks = [t.key for t in event.tasks] + [k for b in event.batches for k in b.keys]
        for plugin in listeners:
            try:
                plugin.update_graph(
                    self, client=event.client_id, keys=list(event.wanted), tasks=tasks
                )
            except Exception:
                logger.exception("Scheduler plugin %r failed in update_graph", plugin_name(plugin))

    def _listening(self, hook: str) -> list[SchedulerPlugin]:
        """The plugins that implement ``hook`` (the others need not be called)."""
        return [p for p in self.plugins.values() if overrides(p, hook)]

    def _plugins_changed(self) -> None:
        """Transitions reach plugins only while one listens: otherwise they cost nothing."""
        self._transition_listeners = self._listening("transition")
        self.state.transition_hook = self._on_transition if self._transition_listeners else None

    def _on_transition(self, key: Any, start: str, finish: str, stimulus: str) -> None:
        for plugin in self._transition_listeners:
            try:
                plugin.transition(key, start, finish, stimulus_id=stimulus)
            except Exception:  # must not break the state machine mid-event
                logger.exception("Scheduler plugin %r failed in transition", plugin_name(plugin))

    async def _call_plugins(self, hook: str, *args: Any, **kwargs: Any) -> None:
        """Call ``hook`` on the plugins that implement it (awaiting coroutines); a
        failing one is logged."""
        for plugin in self._listening(hook):
            try:
                result = getattr(plugin, hook)(*args, **kwargs)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("Scheduler plugin %r failed in %s", plugin_name(plugin), hook)

    async def _start_plugin(self, plugin: SchedulerPlugin) -> None:
        try:
            result = plugin.start(self)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("Starting scheduler plugin %r failed", plugin_name(plugin))

    async def _close_plugin(self, plugin: SchedulerPlugin) -> None:
        try:
            result = plugin.close()
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("Closing scheduler plugin %r failed", plugin_name(plugin))

    def _notify(self, hook: str, ident: str) -> None:
        """Call ``hook(self, ident)`` on every plugin; a failing one is logged."""
        for name, plugin in list(self.plugins.items()):
            try:
                getattr(plugin, hook)(self, ident)
            except Exception:
                logger.exception("Scheduler plugin %r failed in %s", name, hook)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tick_loop(self) -> None:
        """Worker-ttl, collector pauses and idle-timeout, every ``interval``; a step
        that raises is logged and the loop goes on."""
        interval = min(0.5, (self.worker_ttl or 5.0) / 10)
        while True:
            await asyncio.sleep(interval)
            now = time.time()
            self._guarded("tick", self.apply, se.Tick(now))
            self._guarded("collector tick", self._gc_tick)
            if self.idle_timeout is not None and self._guarded("idle check", self._check_idle, now):
                logger.info("Scheduler idle for %.1f s: closing", self.idle_timeout)
                self.loop.create_task(self.close())  # type: ignore[union-attr]
                return

    @staticmethod
    def _guarded(what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, or None (and one log line) if it raises."""
        try:
            return fn(*args)
        except Exception as e:
            text = str(e) if isinstance(e, EventFailed) else f"{type(e).__name__}: {e}"
            debug = logger.isEnabledFor(logging.DEBUG)  # the traceback when debugging
            logger.error("Scheduler %s failed: %s", what, text, exc_info=debug)
            return None

    def _gc_tick(self) -> None:
        self._gc.tick(time.monotonic(), self.state.is_idle())

    def _check_idle(self, now: float) -> bool:
        if self.state.clients or not self.state.is_idle():
            self._idle_since = None
            return False
        since = max(self._idle_since or now, self.state.last_activity)
        self._idle_since = since
        return now - since > (self.idle_timeout or 0)

    # -------------------------------------------------------------- messages

    def apply(self, event: se.SchedulerEvent) -> None:
        """Hand one event to the state machine and send what it says to send.

        EventFailed if the state machine raised: nothing it produced for the event is
        sent, and the connection whose message caused it is to close (``serve_peer``
        closes it when a handler lets the error through).
        """
        try:
            instructions = self.state.handle(event)
        except Exception as e:
            name = type(event).__name__
            raise EventFailed(f"{name} failed: {type(e).__name__}: {e}") from e
        settled: list[Any] = []
        for instr in instructions:
            if isinstance(instr, ToWorker):
                peer = self.stream_comms.get(instr.worker)
            elif instr.client_id == FIRE_AND_FORGET:
                if isinstance(instr, (KeyInMemory, KeyErred)):
                    settled.append(instr.key)
                continue
            else:
                peer = self.client_comms.get(instr.client_id)
            if peer is not None:
                peer.send(scheduler_instruction_to_msg(instr))
                if type(instr) is CloseWorker and instr.worker not in self.state.workers:
                    self._dropped(instr.worker, instr.reason)
        if settled:
            self._forget_fired(settled)

    def _fire_and_forget(self, peer: Peer, msg: Msg) -> None:
        """Keep these keys wanted until they finish or fail, whoever holds them."""
        if peer.role != "client":
            raise ProtocolViolation("'fire-and-forget' is only for a registered client")
        keys: list[Any] = [k for k in msg["keys"] if isinstance(k, (str, bytes, int, float, tuple))]
        self.apply(se.ClientDesiresKeys(time.time(), FIRE_AND_FORGET, keys))

    def _forget_fired(self, keys: list[Any]) -> None:
        """Fired-and-forgotten tasks that settled are no longer wanted on their behalf;
        the pseudo-client goes once it wants nothing (it would keep the scheduler from
        ever being idle)."""
        now = time.time()
        self.apply(se.ClientReleasesKeys(now, FIRE_AND_FORGET, keys))
        holder = self.state.clients.get(FIRE_AND_FORGET)
        if holder is not None and not holder.wants_what:
            self.apply(se.RemoveClient(now, FIRE_AND_FORGET))

    def _stream_handler(self, role: str, make: Any) -> Handler:
        def handle(peer: Peer, msg: Msg) -> None:
            if peer.role != role:
                raise ProtocolViolation(f"{msg.get('op')!r} is only for a registered {role}")
            try:
                event = make(peer.ident, msg, time.time())
            except (KeyError, TypeError, ValueError) as e:
                raise ProtocolViolation(f"malformed {msg.get('op')!r} message: {e!r}") from e
            if isinstance(event, se.UpdateGraph):
                with gc_paused():  # a graph is a burst of objects that all live on
                    self.apply(event)
                    # before the collector is back: its next young collection would walk
                    # every new record
                    self._gc.after_burst(event.size(), time.monotonic())
                self._graph_updated(event)
            else:
                self.apply(event)

        return handle

    async def _handle_comm(self, comm: Any) -> None:
        peer = Peer(comm, asyncio.get_running_loop())
        peer.max_backlog = self._max_outgoing
        try:
            await serve_peer(peer, self.handlers)
        finally:
            self._peer_gone(peer)

    def _peer_gone(self, peer: Peer) -> None:
        if self.status != "running":
            return
        if peer.role == "worker" and self.stream_comms.get(peer.ident) is peer:
            self.remove_worker_with(se.RemoveWorker(time.time(), peer.ident, "connection closed"))
        elif peer.role == "client" and self.client_comms.get(peer.ident) is peer:
            del self.client_comms[peer.ident]
            logger.info("Remove client %s", peer.ident, extra={"client": peer.ident})
            left = se.RemoveClient(time.time(), peer.ident)
            self._guarded("removal of a client", self.apply, left)
            self._notify("remove_client", peer.ident)

    def remove_worker_with(self, event: se.RemoveWorker | se.WorkerDied) -> None:
        """Apply ``event``, which removes a worker (its connection closed, it said it
        is closing, or its nanny reported its death); a connected worker's stream is
        dropped and the plugins are told, once."""
        address = event.address
        peer = self.stream_comms.pop(address, None)
        if peer is not None:
            if isinstance(event, se.RemoveWorker):
                logger.info(
                    "Remove worker %s (%s)",
                    address,
                    event.reason,
                    extra={"worker": address, "reason": event.reason},
                )
            else:  # its process is gone: so is the connection, whether seen yet or not
                logger.info(
                    "Remove worker %s (%s)",
                    address,
                    event.cause,
                    extra={"worker": address, "reason": event.cause},
                )
                peer.abort()
        self._guarded("removal of a worker", self.apply, event)
        if peer is not None:
            self._notify("remove_worker", address)

    def _dropped(self, address: str, reason: str) -> None:
        """The state machine removed a connected worker itself (silent past worker-ttl,
        or serving no data) and told it to close: its stream is no longer its own (it
        stays open until the worker reads that and closes it), and plugins are told."""
        del self.stream_comms[address]
        logger.warning(
            "Remove worker %s (%s)", address, reason, extra={"worker": address, "reason": reason}
        )
        self._notify("remove_worker", address)

    def _unregister_worker(self, peer: Peer, msg: Msg) -> None:
        """A worker closing on purpose: none of its tasks is to blame."""
        if peer.role == "worker" and self.stream_comms.get(peer.ident) is peer:
            reason = str(msg.get("reason") or "worker-close")
            self.remove_worker_with(se.RemoveWorker(time.time(), peer.ident, reason, True))

    def _register_worker(self, peer: Peer, msg: Msg) -> dict[str, Any]:
        address = str(msg["address"])
        name = msg.get("name", address)
        owner = self.state.names.get(name)
        if owner is not None and owner != address:
            raise ValueError(f"a worker named {name!r} is already registered at {owner}")
        peer.role, peer.ident = "worker", address
        old = self.stream_comms.get(address)
        if old is not None and old is not peer:
            old.abort()
        self.stream_comms[address] = peer
        host = str(msg.get("host") or address.split("://")[-1].rsplit(":", 1)[0])
        self.apply(
            se.AddWorker(
                time.time(),
                address,
                name,
                int(msg["nthreads"]),
                int(msg.get("memory_limit") or 0),
                host,
                dict(msg.get("keys") or {}),
                resource_amounts(msg.get("resources")) or {},
                bool(msg.get("nanny")),
            )
        )
        logger.info(
            "Register worker %s (name %r, %s threads)",
            address,
            name,
            msg["nthreads"],
            extra={"worker": address, "worker_name": str(name), "nthreads": msg["nthreads"]},
        )
        self._notify("add_worker", address)
        return {"status": "OK", "address": self.address, "id": self.id, "token": self.cluster_token}

    def _register_client(self, peer: Peer, msg: Msg) -> dict[str, Any]:
        client_id = str(msg["client"])
        peer.role, peer.ident = "client", client_id
        self.client_comms[client_id] = peer
        self.apply(se.AddClient(time.time(), client_id))
        logger.info("Receive client connection: %s", client_id, extra={"client": client_id})
        self._notify("add_client", client_id)
        return {
            "status": "OK",
            "address": self.address,
            "id": self.id,
            "dashboard": self.dashboard_link,
            "token": self.cluster_token,
        }
