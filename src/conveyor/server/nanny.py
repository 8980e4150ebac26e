"""The nanny: a small process that runs one worker process and keeps it running.

``conveyor worker ADDRESS`` (and each worker of a ``LocalCluster`` with processes) is a
nanny unless ``--no-nanny``: it listens on an address of its own, starts ``conveyor worker
--no-nanny --nanny-address <its address>`` as a child process, and then:

* **restarts the worker when it dies** (a signal, a segfault, ``os._exit``, a non-zero
  exit), after a short back-off that grows while new workers keep dying young. A worker
  that exits with status 0 closed on purpose (its scheduler retired it or shut down):
  the nanny then closes too. Status 3 means the worker lost its scheduler connection
  or was dropped by it (silent past ``worker-ttl``): the nanny replaces it if the
  scheduler still accepts a connection, and closes otherwise.
* **kills the worker before the operating system does** when its resident memory
  crosses ``worker.memory.terminate`` (a fraction of its memory limit), checked every
  ``worker.memory.monitor-interval``; the worker is then restarted like any other.
* **serves the scheduler and clients**: ``restart`` (a fresh worker process; answered
  once the new worker registered), nanny plugins (``plugin-add`` / ``plugin-remove``)
  and ``Client.run(..., nanny=True)``.

The worker connects back to its nanny once registered with the scheduler (``worker-up``,
with its address) and keeps that connection open; a worker whose nanny connection
closes (the nanny was killed) closes itself, so no worker outlives its nanny. The worker
tells the scheduler its nanny's address when it registers; that is how the scheduler
finds the nanny to restart it or to hand it a plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import secrets
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from typing import Any

import psutil

from conveyor import config
from conveyor.comm import Listener, get_address_host, listen
from conveyor.comm.security import Security, as_security, default_protocol
from conveyor.protocol import unpickle_bytes
from conveyor.rpc import Handler, Msg, Peer, PeerPool, serve_peer
from conveyor.rpc.schedfile import read_scheduler_file
from conveyor.server.addresses import listen_address
from conveyor.server.admission import NANNY_SECRET_ENV, matches, presented, refuse
from conveyor.server.calls import error_reply
from conveyor.server.lifecycle import Server
from conveyor.server.logs import logs_reply, process_logs
from conveyor.server.plugin import NannyPlugin
from conveyor.server.plugin_host import PluginHost
from conveyor.server.process import STOP_GRACE, WorkerProcess, exit_description
from conveyor.server.running_file import read_running
from conveyor.server.worker import EXIT_REPLACE
from conveyor.server.worker_control import run_call

__all__ = ["Nanny", "WorkerStartError"]

logger = logging.getLogger("conveyor.nanny")

#: seconds to wait for the scheduler when deciding whether to replace a worker that lost it
_PROBE_TIMEOUT = 2.0
#: a worker that dies sooner than this after it came up counts as dying young
_YOUNG = 10.0
#: seconds before restarting a worker that died young, doubled per young death, capped
_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 10.0


class WorkerStartError(RuntimeError):
    """The worker process exited before it came up (its own output says why)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the worker process exited during start-up ({exit_description(code)})")
        self.code = code if code > 0 else 1


class Nanny(Server):
    """Runs one ``conveyor worker`` process for the scheduler at ``scheduler_address``
    (or in ``scheduler_file``) and keeps it running.

    ``nthreads``, ``name``, ``memory_limit`` (as for a worker: bytes, a size such as
    ``"4GiB"``, a fraction of the machine's memory or ``"auto"``; 0 for none),
    ``local_directory`` and
    ``resources`` are the worker's (``conveyor worker`` options); ``worker_args`` adds
    further options. ``host``/``port``/``interface``/``protocol`` are where the nanny
    listens (the worker listens on the same host). ``env`` is the worker's environment
    (default: this process's). ``plugins`` (:class:`~conveyor.NannyPlugin` instances) are
    set up when the nanny starts, before its worker process: a ``setup`` that raises
    stops the start.
    """

    def __init__(
        self,
        scheduler_address: str | None = None,
        *,
        scheduler_file: str | None = None,
        nthreads: int | None = None,
        name: str | int | None = None,
        memory_limit: int | float | str | None = 0,
        host: str | None = None,
        port: int | None = 0,
        interface: str | None = None,
        protocol: str | None = None,
        local_directory: str | None = None,
        resources: str | None = None,
        worker_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        plugins: Iterable[NannyPlugin] = (),
        security: Security | None = None,
    ) -> None:
        if (scheduler_address is None) == (scheduler_file is None):
            raise ValueError("Nanny needs a scheduler address or a scheduler_file (one)")
        #: TLS credentials and policy, the worker's too (``conveyor.comm.tls.*`` when
        #: not given); the worker process gets them through an inherited descriptor
        self.security = as_security(security, "Nanny")
        #: plugins given here, set up at start (before the worker process starts)
        self._initial_plugins = list(plugins)
        for plugin in self._initial_plugins:
            if not isinstance(plugin, NannyPlugin):
                raise TypeError(f"{plugin!r} is not a conveyor NannyPlugin")
        self.scheduler_address = scheduler_address
        self.scheduler_file = scheduler_file
        self.name = name
        # as a worker reads it ("auto", "4GiB", a fraction, bytes), for nthreads threads
        share = min(1.0, nthreads / config.cpu_count()) if nthreads else 1.0
        self.memory_limit = config.memory_limit(memory_limit, share) or 0
        if protocol is None:  # the scheduler's, or TLS when there are credentials for it
            protocol = (
                scheduler_address.split("://")[0]
                if scheduler_address and "://" in scheduler_address
                else default_protocol(self.security, "nanny")
            )
        if host is None and scheduler_address:
            host = get_address_host(scheduler_address)
        self._listen_at = listen_address(protocol, host, port, interface)
        options: list[tuple[str, object]] = [
            ("--nthreads", nthreads),
            ("--name", name),
            ("--memory-limit", self.memory_limit),
            ("--host", host),
            ("--interface", interface),
            ("--protocol", protocol),
            ("--local-directory", local_directory),
            ("--resources", resources),
        ]
        self._worker_options = [
            part for flag, value in options if value is not None for part in (flag, str(value))
        ]
        self._worker_options += list(worker_args or [])
        self._env = env
        #: the secret this nanny's worker process shows it, and the cluster token the
        #: worker passes on, which the scheduler and clients show (server/admission.py)
        self._secret = secrets.token_urlsafe(32)
        self.cluster_token: str | None = None
        self.id = f"Nanny-{uuid.uuid4()}"
        #: where the worker's task threads note what they run (running_file.py)
        self._running_path = os.path.join(
            local_directory or tempfile.gettempdir(), f"conveyor-running-{self.id}"
        )
        self.address = ""
        self.status = "created"
        #: the worker process and the address it registered with (once it is up)
        self.process: WorkerProcess | None = None
        self.worker_address: str | None = None
        #: why the nanny ended the current worker itself (memory), for the log
        self._kill_cause: str | None = None
        self._up: asyncio.Future[str] | None = None
        self._young_deaths = 0
        self._restart_lock: asyncio.Lock | None = None
        self._listener: Listener | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = asyncio.Event()
        self._plugins = PluginHost(self, "nanny")
        process_logs()  # its log lines, for Client.get_worker_logs(nanny=True)
        #: the connection to the scheduler, for reports on the worker's end
        self._pool = PeerPool(
            "nanny",
            {},
            _PROBE_TIMEOUT,
            connection_args=self.security.get_connection_args("nanny"),
        )
        self._plugin_bytes: dict[str, bytes] = {}
        self._handlers: dict[str, Handler] = {
            "worker-up": self._worker_up,
            "restart": self._restart_request,
            "plugin-add": self._plugin_add,
            "plugin-remove": self._plugin_remove,
            "run": lambda p, m: run_call(m, self),
            "identity": lambda p, m: {"type": "Nanny", "id": self.id, "address": self.address},
            "get-logs": lambda p, m: logs_reply(m),
        }

    def __repr__(self) -> str:
        return (
            f"<Nanny {self.address or 'not started'} worker={self.worker_address} "
            f"status={self.status}>"
        )

    @property
    def plugins(self) -> dict[str, Any]:
        """Nanny plugins installed here, by name."""
        return self._plugins.plugins

    # --------------------------------------------------------------- lifecycle

    async def start(self) -> Nanny:
        """Listen, start the worker process and wait until it registered."""
        if self.status == "running":
            return self
        self._restart_lock = asyncio.Lock()
        self._listener = listen(
            self._listen_at,
            self._handle_comm,
            role="nanny",
            **self.security.get_listen_args("nanny"),
        )
        await self._listener.start()
        self.address = self._listener.contact_address
        self.status = "running"
        try:
            for plugin in self._initial_plugins:  # in place before the worker starts
                await self._plugins.install(plugin)
            await self._start_worker()
        except BaseException:
            await self.close()
            raise
        self._spawn(self._monitor_memory())
        logger.info("Nanny at %s runs worker %s", self.address, self.worker_address)
        return self

    async def close(self) -> None:
        """Stop the worker process (SIGTERM, then SIGKILL after a grace period), tear
        the plugins down and stop listening."""
        if self.status in ("closing", "closed"):
            await self._closed.wait()
            return
        self.status = "closing"
        if self.process is not None:
            await self.process.stop(STOP_GRACE)
        await self._plugins.close()
        await self._pool.close()
        with contextlib.suppress(OSError):
            os.unlink(self._running_path)
        if self._listener is not None:
            self._listener.stop()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self.status = "closed"
        self._closed.set()

    # ---------------------------------------------------------- the worker

    def _worker_command(self, security_fd: int | None) -> list[str]:
        target = (
            [self.scheduler_address]
            if self.scheduler_address is not None
            else ["--scheduler-file", str(self.scheduler_file)]
        )
        return [
            sys.executable,
            "-m",
            "conveyor.cli.main",
            "worker",
            *target,
            "--no-nanny",
            "--nanny-address",
            self.address,
            "--running-file",
            self._running_path,
            *([] if security_fd is None else ["--security-fd", str(security_fd)]),
            *self._worker_options,
        ]

    def _security_in_use(self) -> bool:
        """Whether the worker needs this nanny's TLS settings (credentials, or a policy
        that differs from the configuration's)."""
        return (
            self.security.get_listen_args("worker")["ssl_context"] is not None
            or self.security.require_encryption
        )

    async def _start_worker(self) -> None:
        """Start a worker process and wait for it to come up (or fail clearly)."""
        loop = asyncio.get_running_loop()
        self._up = loop.create_future()
        self.worker_address = None
        self._kill_cause = None
        # the worker gets the TLS settings through a descriptor of an in-memory file
        fd = self.security.to_fd() if self._security_in_use() else None
        try:
            # same process group as the nanny: whoever ends the nanny's group ends both
            proc = WorkerProcess(
                str(self.name),
                self._worker_command(fd),
                None,
                # the worker shows this secret when it reports (it takes it out of its
                # environment at start, before any task could see it)
                {
                    **(os.environ if self._env is None else self._env),
                    NANNY_SECRET_ENV: self._secret,
                },
                False,
                pass_fds=() if fd is None else (fd,),
            )
        finally:
            if fd is not None:
                os.close(fd)
        self.process = proc
        exited: asyncio.Future[Any] = asyncio.ensure_future(proc.wait(None))
        up: asyncio.Future[Any] = self._up
        timeout = (config.parse_duration(config.get("comm.timeouts.connect")) or 30.0) + 30.0
        try:
            done, _ = await asyncio.wait(
                {up, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not exited.done():
                exited.cancel()
        if self._up.done():
            self._spawn(self._supervise(proc, time.monotonic()))
            return
        if not done:
            await proc.stop(STOP_GRACE)
            raise TimeoutError(f"the worker process did not register within {timeout:g} s")
        record = read_running(self._running_path)
        if record is not None and record.address and record.executing != []:
            # a task killed it before it could say it was up: it died, it did not fail
            # to start
            self.worker_address = record.address
            self._spawn(self._supervise(proc, time.monotonic()))
            return
        raise WorkerStartError(proc.popen.wait())

    async def _supervise(self, proc: WorkerProcess, up_at: float) -> None:
        """Wait for ``proc`` to end; restart it if it died, close if it ended on purpose."""
        await proc.wait(None)
        if self.status != "running" or proc is not self.process:
            return  # closing, or replaced by a restart
        code = proc.popen.wait()
        if code == 0:
            logger.info("Worker %s closed; the nanny closes too", self.worker_address)
            self._spawn(self.close())
            return
        cause = self._kill_cause or exit_description(code)
        if not await self._report(code, cause) and code == EXIT_REPLACE:
            logger.info("Worker %s lost its scheduler, which is gone: closing", self.worker_address)
            self._spawn(self.close())
            return
        self._young_deaths = self._young_deaths + 1 if time.monotonic() - up_at < _YOUNG else 0
        delay = 0.0
        if self._young_deaths:
            delay = min(_FIRST_BACKOFF * 2 ** (self._young_deaths - 1), _MAX_BACKOFF)
        logger.warning(
            "Worker process %d (%s) died: %s; restarting it%s",
            proc.pid,
            self.worker_address,
            cause,
            f" in {delay:.1f} s" if delay else "",
        )
        await asyncio.sleep(delay)
        assert self._restart_lock is not None
        async with self._restart_lock:
            if self.status == "running" and proc is self.process:
                await self._restart_in_place()

    async def _report(self, code: int, cause: str) -> bool:
        """Tell the scheduler how the worker process ended and which tasks it was
        running (:mod:`conveyor.core.deaths`); whether the scheduler answered (one try,
        a short wait)."""
        address = self.scheduler_address
        if address is None:
            try:
                address = read_scheduler_file(str(self.scheduler_file), 0.1)
            except Exception:
                return False
        record = read_running(self._running_path)
        msg = {
            "op": "worker-died",
            "worker": self.worker_address,
            "cause": cause,
            "executing": None if record is None else record.executing,
            "died": code != EXIT_REPLACE,  # else it closed itself, its scheduler lost
        }
        try:
            peer = await self._pool.get(address)
        except Exception:  # refused, or no answer in time: the scheduler is gone
            return False
        try:
            await peer.request(msg, timeout=_PROBE_TIMEOUT)
        except Exception as e:  # it answered the connection, at least
            logger.info("Could not report the worker's end to the scheduler: %s", e)
        return True

    async def _restart_in_place(self) -> None:
        try:
            await self._start_worker()
        except Exception as e:
            logger.error("Could not restart the worker: %s; the nanny closes", e)
            self._spawn(self.close())

    async def restart(self) -> str:
        """End the worker process and start a new one; its address once registered."""
        assert self._restart_lock is not None
        async with self._restart_lock:
            old = self.process
            self.process = None  # its supervisor sees it was replaced
            if old is not None:
                await old.stop(STOP_GRACE)
            await self._start_worker()
        assert self.worker_address is not None
        return self.worker_address

    async def _monitor_memory(self) -> None:
        """Kill the worker when its resident memory crosses the terminate fraction."""
        fraction = config.get("worker.memory.terminate", None)
        interval = config.parse_duration(config.get("worker.memory.monitor-interval", "100ms"))
        if not self.memory_limit or not fraction or not interval:
            return
        threshold = float(fraction) * self.memory_limit
        while self.status == "running":
            await asyncio.sleep(interval)
            proc = self.process
            if proc is None or proc.returncode is not None or self._kill_cause is not None:
                continue
            try:
                rss = psutil.Process(proc.pid).memory_info().rss
            except psutil.Error:  # gone meanwhile: its supervisor handles that
                continue
            if rss > threshold:
                self._kill_cause = (
                    f"memory limit: {rss / 2**20:.0f} MiB resident, over "
                    f"{float(fraction):.0%} of its {self.memory_limit / 2**20:.0f} MiB limit"
                )
                logger.warning("Worker %s: %s; killing it", self.worker_address, self._kill_cause)
                proc.signal(signal.SIGKILL)

    # -------------------------------------------------------------- requests

    async def _handle_comm(self, comm: Any) -> None:
        token = presented(comm)
        if not (matches(token, self._secret) or matches(token, self.cluster_token)):
            refuse(comm, f"Nanny {self.address}")
            return
        peer = Peer(comm, asyncio.get_running_loop())
        await serve_peer(peer, self._handlers)

    def _worker_up(self, peer: Peer, msg: Msg) -> None:
        if not matches(presented(peer.comm), self._secret):
            raise PermissionError("worker-up is for this nanny's own worker process")
        token = msg.get("token")
        if isinstance(token, str):
            self.cluster_token = token
        up = self._up
        if up is not None and not up.done():
            self.worker_address = str(msg["address"])
            up.set_result(self.worker_address)

    async def _restart_request(self, peer: Peer, msg: Msg) -> dict[str, Any]:
        return {"status": "OK", "worker": await self.restart()}

    def _plugin_add(self, peer: Peer, msg: Msg) -> Any:
        name = str(msg["name"])
        data = bytes(msg["plugin"])
        if self._plugin_bytes.get(name) == data and name in self.plugins:
            return {"status": "OK"}  # handed again (the scheduler does on each registration)
        self._plugin_bytes[name] = data
        try:
            plugin = unpickle_bytes(data)
        except Exception as e:
            logger.exception("Could not load nanny plugin %r", name)
            return error_reply(e)
        outcome = self._plugins.add(name, plugin)
        if not getattr(plugin, "restart", False):
            return outcome

        async def then_restart() -> Any:
            result = await outcome if inspect.isawaitable(outcome) else outcome
            if result.get("status") == "OK":
                await self.restart()
            return result

        return then_restart()

    def _plugin_remove(self, peer: Peer, msg: Msg) -> Any:
        name = str(msg["name"])
        self._plugin_bytes.pop(name, None)
        return self._plugins.remove(name)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        error = task.exception()
        if error is not None:
            logger.error("Nanny task failed: %r", error)
