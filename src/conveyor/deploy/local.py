"""LocalCluster: a scheduler and workers on this machine, for one program to use.

The scheduler always runs in this process, on the shared background loop
(:class:`~conveyor.rpc.loop.LoopRunner`) for synchronous use or on the caller's running
loop with ``asynchronous=True``. Workers are either :class:`~conveyor.server.worker.Worker`
objects on the same loop (``processes=False``) or one ``conveyor worker`` subprocess each
(``processes=True``), each in its own process group so that closing the cluster can end a
worker and everything it started, by pid. A finalizer kills worker processes still running
when the cluster is garbage-collected or the interpreter exits, so a forgotten cluster does
not leave orphans behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Any

import dask.config
from dask.utils import format_bytes

from conveyor import config
from conveyor.comm.security import Security, as_security
from conveyor.deploy.reprs import cluster_html, link, rows_from_state
from conveyor.rpc.loop import LoopRunner
from conveyor.server.nanny import Nanny
from conveyor.server.process import STOP_GRACE, WorkerProcess
from conveyor.server.resources import format_resources, parse_resources
from conveyor.server.scheduler import Scheduler
from conveyor.server.worker import Worker

__all__ = ["LocalCluster", "WorkerProcess"]

logger = logging.getLogger("conveyor.deploy")

DEFAULT_START_TIMEOUT = 60.0  # seconds for the scheduler to see every worker start
REGISTRATION_POLL = 0.01  # seconds between looks at the scheduler's workers
# worker keyword arguments that have a ``conveyor worker`` option, for processes=True
_PROCESS_WORKER_OPTIONS = {
    "local_directory": "--local-directory",
    "interface": "--interface",
    "resources": "--resources",
}


def _worker_process_config() -> dict[str, Any]:
    """This process's dask.config as a worker process of its LocalCluster gets it.

    The worker also imports at start (``worker.warm-imports``) each module of
    ``local.warm-imports-if-loaded`` that this process has imported already: a program
    that imported ``dask.dataframe`` before making its cluster will run DataFrame tasks,
    and the first of them would otherwise wait for every worker to import it (about a
    second each). The cluster takes that much longer to start instead.
    """
    base: dict[str, Any] = dask.config.global_config
    loaded = [m for m in config.get("local.warm-imports-if-loaded", None) or [] if m in sys.modules]
    warm = list(config.get("worker.warm-imports", None) or [])
    extra = [m for m in loaded if m not in warm]
    if not extra:
        return base
    merged: dict[str, Any] = dask.config.merge(
        base, {"conveyor": {"worker": {"warm-imports": warm + extra}}}
    )
    return merged


class _Resources:
    """What a cluster must release even if it is never closed: processes and a directory.

    Held by a ``weakref.finalize`` so that it runs when the cluster is garbage-collected or
    at interpreter exit; ``LocalCluster.close`` runs it too (it runs at most once).
    """

    def __init__(self) -> None:
        self.processes: dict[int, WorkerProcess] = {}
        self.directory: str | None = None
        self.owner_pid = os.getpid()

    def release(self) -> None:
        if os.getpid() != self.owner_pid:  # a forked child exiting: not its resources
            return
        for proc in list(self.processes.values()):
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        for proc in list(self.processes.values()):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
            proc.kill_now()
        self.processes.clear()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


class LocalCluster:
    """A scheduler and ``n_workers`` workers on this machine.

    Parameters follow ``distributed.LocalCluster``. With ``processes=True`` (default) each
    worker is a subprocess run by a nanny, which restarts it when it dies or crosses its
    memory terminate threshold (``worker_class=Worker``: a worker process without a
    nanny); with ``processes=False`` workers run in this process on the scheduler's
    event loop. ``memory_limit`` is per worker ("auto": system memory divided
    among the workers; "4GB"; a fraction; 0/None for none). Extra keyword arguments go to
    the workers, e.g. ``resources={"GPU": 1}`` (amounts each worker offers to tasks that
    need them; ``"GPU=1"`` also works). With ``asynchronous=True``, ``await`` the cluster
    (or use ``async with``) and await ``close()`` and ``scale()``. The scheduler serves
    its dashboard at ``dashboard_address`` (":8787": 127.0.0.1, or a free port if taken;
    None: no dashboard); see :attr:`dashboard_link`.
    """

    def __init__(
        self,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        processes: bool = True,
        memory_limit: str | float | None = "auto",
        host: str | None = None,
        scheduler_port: int = 0,
        scheduler_kwargs: dict[str, Any] | None = None,
        worker_kwargs: dict[str, Any] | None = None,
        dashboard_address: str | None = ":8787",
        asynchronous: bool = False,
        silence_logs: int | bool = logging.WARNING,
        name: str | None = None,
        protocol: str | None = None,
        timeout: float | str | None = None,
        worker_class: type | None = None,
        security: Security | bool | None = None,
        **kwargs: Any,
    ) -> None:
        self.processes = processes
        self.nanny = _uses_nanny(worker_class, processes)
        self.n_workers, self.threads_per_worker = _cluster_shape(
            n_workers, threads_per_worker, processes
        )
        self.memory_limit = config.memory_limit(memory_limit, 1 / max(1, self.n_workers))
        #: the cluster's TLS credentials and policy: ``security=True`` makes temporary
        #: ones (in memory only) that every process of the cluster shares
        self.security = (
            Security.temporary() if security is True else as_security(security, "LocalCluster")
        )
        if protocol is None and security not in (None, False):
            protocol = "tls"  # credentials given for this cluster: use them
        self.protocol, self.host = _protocol_and_host(protocol, host, processes, scheduler_port)
        self.name = name
        self.asynchronous = asynchronous
        self.scheduler: Scheduler | None = None
        self.workers: dict[int, Worker | WorkerProcess] = {}
        self.status = "created"
        self._scheduler_port = scheduler_port
        self._scheduler_kwargs = {
            "dashboard": dashboard_address is not None,
            "dashboard_address": dashboard_address,
            # its user started this scheduler, in their own process: it may run their code
            "allow_remote_code": True,
            **(scheduler_kwargs or {}),
        }
        self._worker_kwargs = {**(worker_kwargs or {}), **kwargs}
        if self._worker_kwargs.get("resources") is not None:
            # checked now, not in each worker; every worker offers these amounts
            self._worker_kwargs["resources"] = parse_resources(self._worker_kwargs["resources"])
        if processes:
            _check_process_worker_options(self._worker_kwargs)
        self._timeout = config.parse_duration(DEFAULT_START_TIMEOUT if timeout is None else timeout)
        self._silence_logs = silence_logs
        self._saved_log_level: int | None = None
        self._next_name = 0
        self._lock: asyncio.Lock | None = None
        self._resources = _Resources()
        self._finalizer = weakref.finalize(self, self._resources.release)
        self._runner: LoopRunner | None = None
        if not asynchronous:
            self._runner = LoopRunner.acquire()
            try:
                self._runner.run_sync(self._start)
            except BaseException:
                self._runner.release()
                self._runner = None
                self._finalizer()
                raise

    # -- public API ----------------------------------------------------------------------

    @property
    def dashboard_link(self) -> str | None:
        """The scheduler's dashboard URL (``http://127.0.0.1:8787/``), or None when it
        serves none (``dashboard_address=None``) or is not started."""
        return self.scheduler.dashboard_link if self.scheduler is not None else None

    @property
    def scheduler_address(self) -> str:
        """The scheduler's address, e.g. ``tcp://127.0.0.1:40123``."""
        if self.scheduler is None:
            raise RuntimeError("the cluster is not started")
        return str(self.scheduler.address)

    def scale(self, n: int) -> Any:
        """Start or stop workers until there are ``n``; awaitable if asynchronous."""
        if n < 0:
            raise ValueError(f"cannot scale to {n} workers")
        return self._sync(self._scale, n)

    def restart_workers(self) -> Any:
        """Stop every worker and start a fresh one (a new process, or a new in-process
        Worker) under each name the scheduler still lists; workers that left (retired
        ones, say) are not brought back. Returns once they registered; awaitable if
        asynchronous, or when called on the cluster's own event loop (as a client does).
        """
        if self._runner is not None and self._runner.in_loop_thread():
            return self._restart_workers()
        return self._sync(self._restart_workers)

    def close(self) -> Any:
        """Stop the workers and the scheduler; awaitable if asynchronous.

        Leaves no worker process, loop thread or temporary directory behind.
        """
        if self.asynchronous:
            return self._close()
        runner = self._runner
        if runner is None:  # closed already, or failed to start
            return None
        try:
            runner.run_sync(self._close)
        finally:
            self._runner = None
            runner.release()
        return None

    def __enter__(self) -> LocalCluster:
        if self.asynchronous:
            raise TypeError("use 'async with' for an asynchronous LocalCluster")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __await__(self) -> Generator[Any, None, LocalCluster]:
        return self._start().__await__()

    async def __aenter__(self) -> LocalCluster:
        return await self._start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    def __repr__(self) -> str:
        address = self.scheduler_address if self.status == "running" else self.status
        n = len(self.workers)
        memory = "unlimited" if self.memory_limit is None else format_bytes(n * self.memory_limit)
        return (
            f"{type(self).__name__}({address}, workers={n}, "
            f"threads={n * self.threads_per_worker}, memory={memory})"
        )

    def _repr_html_(self) -> str:
        """Jupyter's view: scheduler address, dashboard link, status, workers, threads,
        memory, and a table of the workers (as the scheduler lists them)."""
        s = self.scheduler
        rows = rows_from_state(s.workers) if s is not None and self.status == "running" else None
        fields = {
            "Scheduler": html.escape(self.scheduler_address) if rows is not None else "not started",
            "Dashboard": link(self.dashboard_link),
            "Status": html.escape(self.status),
        }
        return cluster_html(type(self).__name__, fields, rows, show_workers=True)

    # -- implementation ------------------------------------------------------------------

    def _sync(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        if self.asynchronous:
            return fn(*args)
        if self._runner is None:
            raise RuntimeError("the cluster is closed")
        return self._runner.run_sync(fn, *args)

    async def _start(self) -> LocalCluster:
        if self.status == "running":
            return self
        if self.status != "created":
            raise RuntimeError(f"cannot start a cluster that is {self.status}")
        self.status = "starting"
        self._silence()
        self._lock = asyncio.Lock()
        try:
            self.scheduler = Scheduler(
                host=self.host,
                port=self._scheduler_port,
                protocol=self.protocol,
                security=self.security,
                **self._scheduler_kwargs,
            )
            await self.scheduler.start()
            await self._scale(self.n_workers)
        except BaseException:
            await self._close()
            raise
        self.status = "running"
        return self

    async def _close(self) -> None:
        if self.status in ("closing", "closed"):
            return
        self.status = "closing"
        try:
            await self._stop_workers(list(self.workers))
            if self.scheduler is not None:
                await self.scheduler.close()
        finally:
            self._finalizer()
            self._unsilence()
            self.status = "closed"

    async def _scale(self, n: int) -> None:
        if self._lock is None:
            raise RuntimeError("the cluster is not started")
        async with self._lock:
            if n > len(self.workers):
                await self._start_workers(n - len(self.workers))
            elif n < len(self.workers):
                await self._stop_workers(sorted(self.workers)[n:])

    async def _restart_workers(self) -> None:
        if self._lock is None:
            raise RuntimeError("the cluster is not started")
        async with self._lock:
            names = sorted(self.workers)
            registered = self._registered_names()
            await self._stop_workers(names)
            await self._start_named([name for name in names if str(name) in registered])

    async def _start_workers(self, count: int) -> None:
        names = list(range(self._next_name, self._next_name + count))
        self._next_name += count
        await self._start_named(names)

    async def _start_named(self, names: list[int]) -> None:
        if not names:
            return
        if self.processes:
            self.workers.update((name, self._spawn(name)) for name in names)
        else:
            workers = [self._make_worker(name) for name in names]
            self.workers.update(zip(names, workers, strict=True))
            await asyncio.gather(*(worker.start() for worker in workers))
        await self._until_registered(names)

    def _make_worker(self, name: int) -> Worker:
        kwargs = {
            "nthreads": self.threads_per_worker,
            "name": name,
            "memory_limit": self.memory_limit or 0,
            "host": self.host,
            "protocol": self.protocol,
            "local_directory": self._directory(),
            "security": self.security,
            **self._worker_kwargs,
        }
        return Worker(self.scheduler_address, **kwargs)

    def _spawn(self, name: int) -> WorkerProcess:
        args = [
            sys.executable,
            "-m",
            "conveyor.cli.main",
            "worker",
            self.scheduler_address,
            "--nthreads",
            str(self.threads_per_worker),
            "--memory-limit",
            str(self.memory_limit or 0),
            "--name",
            str(name),
            "--protocol",
            self.protocol,
        ]
        if self.host is not None:
            args += ["--host", self.host]
        if not self.nanny:
            args.append("--no-nanny")
        options = {"local_directory": self._directory(), **self._worker_kwargs}
        for key, value in options.items():
            if key == "resources" and value is not None:
                value = format_resources(value) or None
            if value is not None:
                args += [_PROCESS_WORKER_OPTIONS[key], str(value)]
        log_path = Path(self._directory(), f"worker-{name}.log")
        # the worker sees this process's dask.config (environment variables still win)
        env = {
            **os.environ,
            "DASK_INTERNAL_INHERIT_CONFIG": dask.config.serialize(_worker_process_config()),
        }
        # the TLS settings travel through a descriptor of an in-memory file, never argv
        fd = self.security.to_fd() if self.protocol == "tls" else None
        if fd is not None:
            args += ["--security-fd", str(fd)]
        try:
            proc = WorkerProcess(name, args, log_path, env, pass_fds=() if fd is None else (fd,))
        finally:
            if fd is not None:
                os.close(fd)
        self._resources.processes[name] = proc
        return proc

    async def _stop_workers(self, names: list[int]) -> None:
        workers = [self.workers.pop(name) for name in names]
        results = await asyncio.gather(*(_stop(w) for w in workers), return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            self._resources.processes.pop(name, None)
            if isinstance(result, BaseException):
                logger.warning("Error while stopping worker %s: %r", name, result)
        await self._until_unregistered(names)

    async def _until_registered(self, names: list[int]) -> None:
        """Wait until the scheduler lists every worker in ``names``, or fail clearly."""
        expected = {str(name) for name in names}
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while not expected <= self._registered_names():
            for name in names:
                worker = self.workers[name]
                if isinstance(worker, WorkerProcess) and worker.returncode is not None:
                    raise RuntimeError(
                        f"worker process {name} (pid {worker.pid}) exited with status "
                        f"{worker.returncode} during start-up. Its last output:\n"
                        f"{worker.output_tail()}"
                    )
            if deadline is not None and time.monotonic() > deadline:
                missing = sorted(expected - self._registered_names())
                raise TimeoutError(
                    f"workers {', '.join(missing)} did not register with the scheduler at "
                    f"{self.scheduler_address} within {self._timeout:g}s"
                )
            await asyncio.sleep(REGISTRATION_POLL)

    async def _until_unregistered(self, names: list[int]) -> None:
        """Wait (bounded) until the scheduler no longer lists the workers in ``names``."""
        gone = {str(name) for name in names}
        deadline = time.monotonic() + STOP_GRACE
        while gone & self._registered_names() and time.monotonic() < deadline:
            await asyncio.sleep(REGISTRATION_POLL)

    def _registered_names(self) -> set[str]:
        if self.scheduler is None:
            return set()
        return {str(info.name) for info in list(self.scheduler.workers.values())}

    def _directory(self) -> str:
        """The cluster's scratch directory (worker logs and spilled data), made on demand."""
        if self._resources.directory is None:
            parent = config.get("local.directory", None)
            self._resources.directory = tempfile.mkdtemp(prefix="conveyor-", dir=parent)
        return self._resources.directory

    def _silence(self) -> None:
        if self._silence_logs is False or self._silence_logs == 0:
            return
        level = logging.WARNING if self._silence_logs is True else int(self._silence_logs)
        log = logging.getLogger("conveyor")
        self._saved_log_level = log.level
        log.setLevel(level)

    def _unsilence(self) -> None:
        if self._saved_log_level is not None:
            logging.getLogger("conveyor").setLevel(self._saved_log_level)
            self._saved_log_level = None


async def _stop(worker: Worker | WorkerProcess) -> None:
    if isinstance(worker, WorkerProcess):
        await worker.stop()
    else:
        await worker.close()


def _cluster_shape(
    n_workers: int | None, threads_per_worker: int | None, processes: bool
) -> tuple[int, int]:
    """Default worker count and threads per worker, as distributed's LocalCluster."""
    cpus = config.cpu_count()
    if n_workers is None and threads_per_worker is None:
        if not processes:
            return 1, cpus
        n_workers = _default_process_count(cpus)
        return n_workers, max(1, cpus // n_workers)
    if n_workers is None:
        assert threads_per_worker is not None
        n_workers = max(1, cpus // threads_per_worker) if processes else 1
    if threads_per_worker is None:
        threads_per_worker = max(1, math.ceil(cpus / max(1, n_workers)))
    if n_workers < 0 or threads_per_worker < 1:
        raise ValueError(
            f"need n_workers >= 0 and threads_per_worker >= 1, "
            f"got {n_workers} and {threads_per_worker}"
        )
    return n_workers, threads_per_worker


def _default_process_count(cpus: int) -> int:
    """One process per CPU up to 4; beyond, the smallest factor of ``cpus`` >= its root."""
    if cpus <= 4:
        return cpus
    return min(f for f in range(1, cpus + 1) if cpus % f == 0 and f * f >= cpus)


def _protocol_and_host(
    protocol: str | None, host: str | None, processes: bool, scheduler_port: int
) -> tuple[str, str | None]:
    """Choose the transport and listening host as distributed's LocalCluster does.

    A scheme in ``host`` ("tcp://10.0.0.1") wins; in-process workers with no fixed
    scheduler port talk over ``inproc``; otherwise ``tcp`` on 127.0.0.1.
    """
    if host is not None and "://" in host:
        prefix, host = host.split("://", 1)
        protocol = protocol or prefix
    if protocol is None:
        protocol = "inproc" if not processes and not scheduler_port and not host else "tcp"
    protocol = protocol.removesuffix("://")
    if protocol == "inproc":
        return protocol, None
    return protocol, host or "127.0.0.1"


def _uses_nanny(worker_class: type | None, processes: bool) -> bool:
    """Whether each worker runs under a nanny: ``worker_class`` Nanny (the default with
    processes) or Worker (the default without)."""
    if worker_class is None:
        return processes
    if worker_class is Nanny:
        if not processes:
            raise ValueError("worker_class=Nanny needs processes=True: a nanny runs a process")
        return True
    if worker_class is Worker:
        return False
    raise TypeError(f"worker_class must be conveyor's Nanny or Worker, not {worker_class!r}")


def _check_process_worker_options(options: dict[str, Any]) -> None:
    unsupported = sorted(set(options) - set(_PROCESS_WORKER_OPTIONS))
    if unsupported:
        raise TypeError(
            f"worker option(s) {', '.join(unsupported)} cannot be passed to worker processes; "
            f"use processes=False, or only {', '.join(sorted(_PROCESS_WORKER_OPTIONS))}"
        )
