"""The scheduler's HTTP server: the dashboard page, its JSON API and ``/metrics``.

An aiohttp application run on the scheduler's own event loop. It only reads snapshots
the scheduler keeps up to date anyway (per-prefix state counts, the task stream ring,
the workers' heartbeat metrics), so a request costs the scheduler O(workers + prefixes),
never a walk of every task.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from conveyor.comm.addressing import parse_address as parse_comm_address
from conveyor.comm.addressing import parse_host_port, unparse_host_port
from conveyor.server.dashboard.api import add_routes

if TYPE_CHECKING:
    from conveyor.server.scheduler import Scheduler

logger = logging.getLogger("conveyor.dashboard")

#: the page and its scripts, served from the package (no request to any other host)
STATIC = Path(__file__).parent / "static"

#: the host an address without one (":8787") binds: loopback, never every interface
DEFAULT_HOST = "127.0.0.1"

#: hosts that mean "every interface": a server can bind them, nobody can connect to them
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


class _RequestErrorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log with a malformed request (one it answers with a 4xx) as one
    warning line instead of an error with a traceback: a bad client is not a bug here.
    Anything else keeps its traceback."""

    def exception(self, msg: object, *args: object, exc_info: object = True, **kw: object) -> None:
        if isinstance(exc_info, HttpProcessingError) and 400 <= exc_info.code < 500:
            reason = str(exc_info.message).strip().splitlines()[:1] or [""]
            self.warning(f"{msg}: HTTP %d %s", *args, exc_info.code, reason[0][:200])
            return
        self.error(msg, *args, exc_info=exc_info, **kw)  # type: ignore[arg-type]


def parse_address(address: str) -> tuple[str, int]:
    """``(host, port)`` from ``"host:port"``, ``":port"``, ``"port"`` or
    ``"[v6]:port"`` (a ``scheme://`` is dropped). No host means 127.0.0.1."""
    text = address.split("://", 1)[-1].strip()
    if text.isdigit():
        return DEFAULT_HOST, int(text)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"dashboard address {address!r} is not host:port")
    host = host.strip("[]") or DEFAULT_HOST
    return host, int(port)


def link_host(bind_host: str, scheduler_address: str | None) -> str:
    """The host to name in the dashboard's link, which must be reachable.

    A specific ``bind_host`` is named as it is. A wildcard (``0.0.0.0``, ``::`` or
    ``""``: every interface) is replaced by the host of the scheduler's contact address
    when it has one that is not a wildcard itself (a TCP scheduler's contact address
    names an interface of this machine, which the dashboard then listens on too), and
    otherwise by 127.0.0.1: an in-process (``inproc://``) scheduler is only reachable
    from this machine anyway, and 127.0.0.1 always is, where the machine's hostname may
    not resolve. IPv6 hosts come bracketed (``[::1]``).
    """
    host = bind_host
    if host in WILDCARD_HOSTS:
        host = DEFAULT_HOST
        if scheduler_address:
            try:
                scheme, loc = parse_comm_address(scheduler_address)
                host_port = scheme in ("tcp", "tls")
                contact = parse_host_port(loc, default_port=0)[0] if host_port else ""
            except ValueError:
                contact = ""
            if contact not in WILDCARD_HOSTS:
                host = contact
    return unparse_host_port(host.strip("[]"))


def normalize_prefix(http_prefix: str | None) -> str:
    """``"/"`` or ``"/some/prefix/"``: leading and trailing slash, nothing doubled."""
    parts = [p for p in (http_prefix or "").split("/") if p]
    return "/" + "".join(p + "/" for p in parts)


class LoopLag:
    """How late a periodic callback runs on the event loop: the scheduler's load.

    Every ``interval`` seconds a callback is due; ``lag`` is how many seconds after its
    due time the last one ran, ``max_lag`` the largest since :meth:`start`.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.lag = 0.0
        self.max_lag = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        """Begin measuring, on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._arm()

    def stop(self) -> None:
        """Stop measuring (no callback stays scheduled)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.interval
        self._handle = self._loop.call_at(self._due, self._fired)

    def _fired(self) -> None:
        assert self._loop is not None
        self.lag = max(self._loop.time() - self._due, 0.0)
        self.max_lag = max(self.max_lag, self.lag)
        self._arm()


class Dashboard:
    """The dashboard of ``scheduler``, served at ``http://HOST:PORT{http_prefix}``.

    ``address`` is ``"host:port"``; without a host (``":8787"``) it binds 127.0.0.1.
    If the port is taken, :meth:`start` binds a free port on the same host instead (and
    logs it). Pages: ``{prefix}`` (the live page), ``{prefix}static/...``,
    ``{prefix}api/v1/...`` (see :mod:`conveyor.server.dashboard.api`) and
    ``{prefix}metrics`` (Prometheus).
    """

    def __init__(
        self, scheduler: Scheduler, address: str = "127.0.0.1:8787", http_prefix: str = "/"
    ) -> None:
        self.scheduler = scheduler
        self.host, self.requested_port = parse_address(address)
        self.prefix = normalize_prefix(http_prefix)
        self.lag = LoopLag()
        self.started = time.time()
        self.port = 0
        self.app = web.Application()
        add_routes(self.app, self, STATIC)
        self._runner: web.AppRunner | None = None

    @property
    def link(self) -> str:
        """The page's URL, e.g. ``http://127.0.0.1:8787/``; when the dashboard listens
        on every interface, the host is the one :func:`link_host` picks."""
        host = link_host(self.host, self.scheduler.address)
        return f"http://{host}:{self.port}{self.prefix}"

    async def start(self) -> None:
        """Listen (on a free port if the requested one is taken) and start measuring the
        event loop's lag."""
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            logger=_RequestErrorLog(logging.getLogger("aiohttp.server")),
        )
        await runner.setup()
        try:
            try:
                await web.TCPSite(runner, self.host, self.requested_port).start()
            except OSError as e:
                if e.errno != errno.EADDRINUSE or not self.requested_port:
                    raise
                await web.TCPSite(runner, self.host, 0).start()
                logger.info(
                    "Port %d is in use: the dashboard uses port %s instead",
                    self.requested_port,
                    runner.addresses[0][1],
                )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self.started = time.time()
        self.lag.start()
        logger.info("Dashboard at %s", self.link)

    async def close(self) -> None:
        """Stop serving; idempotent."""
        self.lag.stop()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
