"""The ``conveyor`` command line: ``conveyor scheduler`` and ``conveyor worker``.

Each command runs its servers on one event loop (uvloop when installed) until SIGINT or
SIGTERM arrives, or until the servers close by themselves (an idle scheduler, workers whose
scheduler went away); then it closes them and exits with status 0. Start-up problems (an
unreachable scheduler, a server that fails to start) print a one-line ``Error: ...`` and
exit with status 1; a bad option value (a ``--plugin`` that is not one, say) is a usage
error: status 2, before anything listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import click

from conveyor import config
from conveyor.cli.demo import run_demo
from conveyor.cli.logging_setup import FORMATS, configure_logging
from conveyor.cli.plugins import load_plugins, plugin_option
from conveyor.comm.security import Security
from conveyor.rpc.gcpause import tune_server_gc
from conveyor.rpc.loop import new_event_loop
from conveyor.server.nanny import Nanny, WorkerStartError
from conveyor.server.resources import parse_resources
from conveyor.server.scheduler import Scheduler
from conveyor.server.worker import Worker

__all__ = ["main"]

CLOSE_TIMEOUT = 20.0  # seconds allowed for closing the servers after a signal

logger = logging.getLogger("conveyor.cli")


class CommandError(Exception):
    """The command failed; the message is shown to the user as one line."""


class _Server(Protocol):
    """What the command line needs of a Scheduler or a Worker."""

    def start(self) -> Awaitable[object]: ...

    def close(self) -> Awaitable[object]: ...

    def finished(self) -> Awaitable[object]: ...


S = TypeVar("S", bound=_Server)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """conveyor: a dynamic distributed task scheduler with the dask.distributed API."""


def _tls_options(command: Any) -> Any:
    """``--tls-ca-file``, ``--tls-cert``, ``--tls-key`` and ``--require-encryption``,
    shared by the server commands."""
    command = click.option(
        "--require-encryption/--no-require-encryption",
        default=None,
        show_default="the comm.require-encryption configuration: false",
        help="Refuse plain tcp:// listeners and connections.",
    )(command)
    for flag, what in (
        ("--tls-key", "This server's private key (PEM), if not in the --tls-cert file."),
        ("--tls-cert", "This server's certificate (PEM), signed by the --tls-ca-file CA."),
        ("--tls-ca-file", "The cluster's CA certificate (PEM): peers must hold one it signed."),
    ):
        command = click.option(
            flag,
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            show_default="the comm.tls configuration: none",
            help=what,
        )(command)
    return command


def _security(
    role: str, ca: str | None, cert: str | None, key: str | None, require: bool | None
) -> Security | None:
    """The ``Security`` of the TLS options (None when none is given: the configuration's
    then applies); a bad combination is a usage error."""
    if ca is None and cert is None and key is None and require is None:
        return None
    try:
        return Security(
            tls_ca_file=ca,
            require_encryption=require,
            **{f"tls_{role}_cert": cert, f"tls_{role}_key": key},
        )
    except (ValueError, OSError) as e:
        raise click.BadParameter(str(e), param_hint="--tls-*") from None


def _preload_options(command: Any) -> Any:
    """``--preload``, ``--preload-argv`` and ``--log-format``, shared by the server
    commands."""
    command = click.option(
        "--log-format",
        type=click.Choice(FORMATS),
        default=None,
        show_default="the logging.format configuration: text",
        help="Log lines as text, or as one JSON object each (with structured fields).",
    )(command)
    command = click.option(
        "--preload-argv",
        multiple=True,
        show_default="none",
        help="An argument for the preloads' conveyor_setup commands (repeat for more).",
    )(command)
    return click.option(
        "--preload",
        multiple=True,
        show_default="none",
        help="A module or .py file whose conveyor_setup(server) runs at start and "
        "conveyor_teardown(server) at close (repeat for more).",
    )(command)


@main.command()
@_preload_options
@_tls_options
@plugin_option("SchedulerPlugin")
@click.option(
    "--host",
    default=None,
    show_default="every interface",
    help="Address to listen on, e.g. 127.0.0.1.",
)
@click.option("--port", type=int, default=8786, show_default=True, help="0: any free port.")
@click.option(
    "--interface",
    default=None,
    show_default="none: --host decides",
    help="Network interface to listen on, e.g. eth0.",
)
@click.option(
    "--protocol",
    default=None,
    show_default="tls with TLS credentials, else tcp",
    help="Transport: tcp or tls (inproc is for in-process clusters only).",
)
@click.option(
    "--scheduler-file",
    type=click.Path(dir_okay=False),
    default=None,
    show_default="none",
    help="Write the scheduler's address to this JSON file for workers and clients.",
)
@click.option(
    "--dashboard-address",
    default=":8787",
    show_default=True,
    help="Where the dashboard listens; a free port if that one is taken.",
)
@click.option(
    "--dashboard/--no-dashboard", default=True, show_default=True, help="Serve the dashboard."
)
@click.option(
    "--idle-timeout",
    default=None,
    show_default="never",
    help="Close after this long without clients or work, e.g. '1 hour'.",
)
@click.option(
    "--allow-remote-code/--no-allow-remote-code",
    default=None,
    show_default="the scheduler.allow-remote-code configuration: false",
    help="Run code that clients send to the scheduler (run_on_scheduler, scheduler plugins).",
)
def scheduler(
    host: str | None,
    port: int,
    interface: str | None,
    protocol: str | None,
    scheduler_file: str | None,
    dashboard_address: str,
    dashboard: bool,
    idle_timeout: str | None,
    allow_remote_code: bool | None,
    preload: tuple[str, ...],
    preload_argv: tuple[str, ...],
    log_format: str | None,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    require_encryption: bool | None,
    plugins: tuple[str, ...],
) -> None:
    """Start a scheduler and serve until SIGINT or SIGTERM."""
    _configure_logging(log_format)
    security = _security("scheduler", tls_ca_file, tls_cert, tls_key, require_encryption)
    try:
        idle = config.parse_duration(idle_timeout)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--idle-timeout") from None
    loaded = load_plugins(plugins, ("scheduler",))

    def make_servers() -> list[Scheduler]:
        return [
            Scheduler(
                host=host,
                port=port,
                interface=interface,
                protocol=protocol,
                security=security,
                scheduler_file=scheduler_file,
                idle_timeout=idle,
                allow_remote_code=allow_remote_code,
                preload=list(preload),
                preload_argv=list(preload_argv),
                dashboard=dashboard,
                dashboard_address=dashboard_address if dashboard else None,
                plugins=[p.make() for p in loaded],
            )
        ]

    _run(_serve(make_servers))  # the scheduler logs "Scheduler started at ..." itself


@main.command()
@_preload_options
@_tls_options
@plugin_option("WorkerPlugin (in each worker) or NannyPlugin (in each nanny)")
@click.argument("address", required=False)
@click.option(
    "--scheduler-file",
    type=click.Path(dir_okay=False),
    default=None,
    show_default="none",
    help="Read the scheduler's address from this file (waits for it to appear).",
)
@click.option(
    "--host",
    default=None,
    show_default="the scheduler address's host",
    help="Address to listen on, e.g. 127.0.0.1.",
)
@click.option(
    "--interface",
    default=None,
    show_default="none: --host decides",
    help="Network interface to listen on.",
)
@click.option(
    "--protocol",
    default=None,
    show_default="the scheduler address's",
    help="Transport: tcp or tls (inproc is for in-process clusters only).",
)
@click.option(
    "--nthreads",
    type=click.IntRange(min=1),
    default=None,
    show_default="CPU count / nworkers",
    help="Threads per worker.",
)
@click.option(
    "--nworkers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Workers to start (each under a nanny of its own unless --no-nanny).",
)
@click.option(
    "--name",
    default=None,
    show_default="its address",
    help="Worker name; NAME-0, NAME-1... with --nworkers.",
)
@click.option(
    "--memory-limit",
    default="auto",
    show_default=True,
    help="Per worker: 'auto', bytes ('4GB'), a fraction of memory (0.5), or 0 for none.",
)
@click.option(
    "--local-directory",
    default=None,
    show_default="the system's temporary directory",
    help="Where each worker makes its spill directory (removed when it closes).",
)
@click.option(
    "--resources",
    default=None,
    show_default="the worker.resources configuration",
    help="Amounts of resources each worker offers to tasks that need them, e.g. 'GPU=2,MEM=10e9'.",
)
@click.option(
    "--dashboard/--no-dashboard",
    default=False,
    show_default=True,
    help="Workers serve no dashboard (the scheduler's shows them): --dashboard is refused.",
)
@click.option(
    "--nanny/--no-nanny",
    default=True,
    show_default=True,
    help="Run each worker in a process of its own under a nanny, which restarts it when "
    "it dies or crosses the memory terminate threshold.",
)
@click.option("--nanny-address", default=None, hidden=True, help="Set by the nanny.")
@click.option("--running-file", default=None, hidden=True, help="Set by the nanny.")
@click.option(
    "--security-fd",
    type=int,
    default=None,
    hidden=True,
    help="Set by a nanny or LocalCluster: a descriptor holding the TLS settings.",
)
def worker(
    address: str | None,
    scheduler_file: str | None,
    host: str | None,
    interface: str | None,
    protocol: str | None,
    nthreads: int | None,
    nworkers: int,
    name: str | None,
    memory_limit: str,
    local_directory: str | None,
    resources: str | None,
    dashboard: bool,
    nanny: bool,
    nanny_address: str | None,
    running_file: str | None,
    preload: tuple[str, ...],
    preload_argv: tuple[str, ...],
    log_format: str | None,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    require_encryption: bool | None,
    security_fd: int | None,
    plugins: tuple[str, ...],
) -> None:
    """Start NWORKERS workers connected to the scheduler at ADDRESS (each under a
    nanny unless --no-nanny)."""
    _configure_logging(log_format)
    security = _security("worker", tls_ca_file, tls_cert, tls_key, require_encryption)
    if security_fd is not None:
        if security is not None:
            raise click.BadParameter(
                "give the TLS options or --security-fd, not both", param_hint="--security-fd"
            )
        try:
            security = Security.from_fd(security_fd)
        except (OSError, ValueError) as e:
            raise click.BadParameter(str(e), param_hint="--security-fd") from None
    if (address is None) == (scheduler_file is None):
        raise click.ClickException(
            "give the scheduler's ADDRESS or --scheduler-file (exactly one of them)"
        )
    if dashboard:
        raise click.BadParameter(
            "conveyor workers serve no dashboard; the scheduler's shows every worker",
            param_hint="--dashboard",
        )
    for flag, value in (("--nanny-address", nanny_address), ("--running-file", running_file)):
        if value is not None and (nanny or nworkers != 1):
            raise click.BadParameter("is set by a nanny for one --no-nanny worker", param_hint=flag)
    cpus = config.cpu_count()
    threads = nthreads or max(1, cpus // nworkers)
    try:
        limit = config.memory_limit(memory_limit, min(1.0, threads / cpus))
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--memory-limit") from None
    names = [name] if nworkers == 1 else [name and f"{name}-{i}" for i in range(nworkers)]
    try:
        offered = None if resources is None else parse_resources(resources)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--resources") from None
    # a nanny's worker process makes its own worker plugins: here they are only checked
    loaded = load_plugins(plugins, ("worker", "nanny"), instantiate=not nanny)
    if not nanny:
        for p in loaded:
            if p.kind == "nanny":
                raise click.BadParameter(
                    f"{p.spec} is a NannyPlugin, and --no-nanny workers have no nanny",
                    param_hint="'--plugin'",
                )

    common: dict[str, Any] = {
        "scheduler_file": scheduler_file,
        "nthreads": threads,
        "memory_limit": limit or 0,
        "host": host,
        "interface": interface,
        "protocol": protocol,
        "local_directory": local_directory,
        "security": security,
    }
    if nanny:  # the nanny passes --resources, preloads and worker plugins on; each worker
        # process loads them
        passed = [f"--preload={p}" for p in preload]
        passed += [f"--preload-argv={a}" for a in preload_argv]
        passed += [f"--plugin={p.spec}" for p in loaded if p.kind == "worker"]
        if log_format:
            passed.append(f"--log-format={log_format}")

        def make_nannies() -> list[Nanny]:
            return [
                Nanny(
                    address,
                    name=n,
                    resources=resources,
                    worker_args=passed,
                    plugins=[p.make() for p in loaded if p.kind == "nanny"],
                    **common,
                )
                for n in names
            ]

        _run(_serve(make_nannies))
        return

    workers: list[Worker] = []

    def make_servers() -> list[Worker]:
        workers.extend(
            Worker(
                address,
                name=n,
                resources=offered,
                nanny=nanny_address,
                running_file=running_file,
                preload=list(preload),
                preload_argv=list(preload_argv),
                plugins=[p.make() for p in loaded],
                **common,
            )
            for n in names
        )
        return workers

    def started(server: Worker) -> None:
        # the worker logs "Worker started at ..." itself
        logger.info("Registered to: %s", server.scheduler_address)

    _run(_serve(make_servers, started))
    code = max((w.exit_code for w in workers), default=0)
    if code:  # lost or dropped by its scheduler: a nanny replaces it
        sys.exit(code)


@main.command()
@click.option(
    "--tasks",
    "n",
    type=click.IntRange(min=1),
    default=2_000,
    show_default=True,
    help="Tasks in the demo's graph.",
)
@click.option(
    "--nworkers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Worker processes of the embedded cluster.",
)
def demo(n: int, nworkers: int) -> None:
    """Run a small computation on an embedded local cluster and check its result."""
    sys.exit(run_demo(n, nworkers))


def _configure_logging(log_format: str | None) -> None:
    """Log to stderr (see ``conveyor.cli.logging_setup``): the format given, else the
    configured one."""
    fmt = log_format or str(config.get("logging.format"))
    try:
        configure_logging(fmt, str(config.get("logging.level")))
    except ValueError as e:  # a bad configuration value
        raise click.ClickException(f"logging configuration: {e}") from None


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run a server's ``main`` on a new event loop; a ``CommandError`` becomes a one-line
    error."""
    tune_server_gc()
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(main)
    except CommandError as e:
        raise click.ClickException(str(e)) from None


async def _serve(
    make_servers: Callable[[], list[S]],
    started: Callable[[S], None] | None = None,
) -> None:
    """Start servers, then wait for a signal or for all of them to finish; close them."""
    stop = asyncio.Event()
    with _stop_on_signals(stop):
        try:
            servers = make_servers()
        except Exception as e:
            raise CommandError(_error_line(e)) from e
        try:
            done = await _unless_stopped(stop, _start_all(servers))
        except WorkerStartError as e:  # the worker process printed its own error line
            await _close_all(servers)
            raise click.exceptions.Exit(e.code) from e
        except Exception as e:
            await _close_all(servers)
            raise CommandError(_error_line(e)) from e
        if done:
            for server in servers:
                if started is not None:
                    started(server)
            finished = asyncio.gather(*(server.finished() for server in servers))
            if await _unless_stopped(stop, finished):
                logger.info("All servers closed by themselves; exiting")
        await _close_all(servers)


async def _start_all(servers: Sequence[_Server]) -> None:
    await asyncio.gather(*(server.start() for server in servers))


async def _close_all(servers: Sequence[_Server]) -> None:
    closing = asyncio.gather(*(server.close() for server in servers), return_exceptions=True)
    try:
        results = await asyncio.wait_for(closing, CLOSE_TIMEOUT)
    except TimeoutError:
        raise CommandError(f"servers did not close within {CLOSE_TIMEOUT:g}s") from None
    for result in results:
        if isinstance(result, BaseException):
            logger.warning("Error while closing: %r", result)


async def _unless_stopped(stop: asyncio.Event, aw: Awaitable[Any]) -> bool:
    """Await ``aw`` unless ``stop`` is set first; return whether ``aw`` completed.

    If ``stop`` wins, ``aw`` is cancelled. Exceptions from ``aw`` propagate.
    """
    task = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Set ``stop`` on SIGINT or SIGTERM while inside the block."""
    loop = asyncio.get_running_loop()
    signums = (signal.SIGINT, signal.SIGTERM)

    def on_signal(signum: int) -> None:
        logger.info("Received %s, closing", signal.Signals(signum).name)
        stop.set()

    for signum in signums:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield
    finally:
        for signum in signums:
            loop.remove_signal_handler(signum)


def _error_line(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"could not start: {text}"


if __name__ == "__main__":
    main()
