"""pytest plugin: run dask's own tests with every computation on a multi-process cluster.

Load it with ``-p dask_suite_plugin`` (its directory on ``sys.path``; ``run.py`` does
this). For the whole session it starts ONE cluster of worker processes and a client,
either conveyor's or dask.distributed's (``--dask-suite-scheduler`` or the
``DASK_SUITE_SCHEDULER`` environment variable), and before every test sets dask's
configuration so that computations go to that client:

- ``scheduler`` is ``client.get`` (``dask.compute``, ``.compute()``; ``dask.persist``
  uses ``client.persist`` when the client has one);
- ``dataframe.shuffle.method`` is ``"tasks"``, as on a real cluster (dask's "disk"
  default keeps partd files on the local filesystem, which works only while every worker
  shares one machine; tests parametrized over the method still run their "disk" cases).
  dask.bag's tests keep bag's default: bag reads that key too, and its task shuffle
  ignores non-callable groupers and ``npartitions=`` (dask limitations);
- dask's test helpers ``assert_eq`` (array, dataframe, bag) compute with the synchronous
  scheduler unless told otherwise: their ``scheduler="sync"`` default becomes ``None``,
  which means "dask's configured scheduler", i.e. the client.

Tests listed in ``dask_suite_selection.py`` are deselected or marked xfail with their
reason; the known conveyor bugs are marked xfail (strict) only when conveyor is the
scheduler, so a fix shows up as an XPASS failure until its entry is removed. Failures on
distributed are not listed: that run is for comparison. The session fails if tests
ran but no graph reached the client (the routing is broken).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import dask_suite_selection as selection
import psutil
import pytest

SCHEDULERS = ("conveyor", "distributed")
ENV_SCHEDULER = "DASK_SUITE_SCHEDULER"
ENV_WORKERS = "DASK_SUITE_WORKERS"


class Routing:
    """The session's client and what went through it."""

    def __init__(self, kind: str, n_workers: int) -> None:
        self.kind = kind
        self.n_workers = n_workers
        self.cluster: Any = None
        self.client: Any = None
        self.graphs = 0
        self.persists = 0
        self.tests_routed = 0
        self.started = False
        self.workers_at_end: int | None = None
        self.close_seconds: float | None = None
        self.leftover: list[str] = []

    def start(self) -> None:
        """Start the cluster and client, and count the graphs the client is given."""
        self.started = True
        if self.kind == "conveyor":
            import conveyor

            self.cluster = conveyor.LocalCluster(
                n_workers=self.n_workers, threads_per_worker=1, processes=True
            )
            self.client = conveyor.Client(self.cluster, set_as_default=False)
        else:
            import distributed

            self.cluster = distributed.LocalCluster(
                n_workers=self.n_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            )
            self.client = distributed.Client(self.cluster, set_as_default=False)
        self._count("get", "graphs")
        if callable(getattr(self.client, "persist", None)):
            self._count("persist", "persists")

    def _count(self, method: str, counter: str) -> None:
        # A bound method of the client, so that dask still finds the client behind it
        # (``dask.persist`` looks at ``scheduler.__self__``).
        original: Callable[..., Any] = getattr(self.client, method)

        def counted(client: Any, *args: Any, **kwargs: Any) -> Any:
            setattr(self, counter, getattr(self, counter) + 1)
            return original(*args, **kwargs)

        setattr(self.client, method, types.MethodType(counted, self.client))

    @property
    def calls(self) -> int:
        """Graphs computed plus collections persisted through the client."""
        return self.graphs + self.persists

    def workers(self) -> int:
        """How many workers the scheduler knows now."""
        return len(self.client.scheduler_info()["workers"])

    def close(self) -> None:
        """Close the client, then the cluster (its worker processes)."""
        if self.client is None and self.cluster is None:
            return
        start = time.monotonic()
        try:
            if self.client is not None:
                self.client.close()
        finally:
            self.client = None
            if self.cluster is not None:
                self.cluster.close()
                self.close_seconds = time.monotonic() - start
            self.cluster = None
        self.leftover = _children_left()


def _children_left(timeout: float = 5.0) -> list[str]:
    """This process's children still running ``timeout`` seconds from now, as command lines.

    multiprocessing's resource tracker is left out: it lives as long as this process.
    """
    children = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "resource_tracker" not in " ".join(proc.cmdline()):
                children.append(proc)
    _, alive = psutil.wait_procs(children, timeout=timeout)
    left = []
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            left.append(f"{proc.pid}: {' '.join(proc.cmdline())[:120]}")
    return left


_DASK_PARENT = Path(dask.__file__).resolve().parent.parent
_DASK_BAG = _DASK_PARENT / "dask" / "bag"
_ROUTING_KEY = pytest.StashKey[Routing]()
_SAVED_DEFAULTS: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--dask-suite-scheduler``, ``--dask-suite-workers`` and dask's ``--runslow``."""
    group = parser.getgroup("dask-suite", "dask's test suite on a multi-process cluster")
    group.addoption(
        "--dask-suite-scheduler",
        choices=SCHEDULERS,
        default=os.environ.get(ENV_SCHEDULER, "conveyor"),
        help=f"which cluster runs the computations (default: ${ENV_SCHEDULER} or conveyor)",
    )
    group.addoption(
        "--dask-suite-workers",
        type=int,
        default=int(os.environ.get(ENV_WORKERS, "2")),
        help="worker processes, one thread each (default 2)",
    )
    group.addoption("--runslow", action="store_true", help="run dask's tests marked slow")


def pytest_configure(config: pytest.Config) -> None:
    """Prepare the routing (started lazily) and make dask's assert_eq use it."""
    kind = config.getoption("--dask-suite-scheduler")
    config.stash[_ROUTING_KEY] = Routing(kind, config.getoption("--dask-suite-workers"))
    _route_assert_eq()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Close the cluster if a fixture did not, and restore assert_eq's defaults."""
    routing = config.stash.get(_ROUTING_KEY, None)
    if routing is not None:
        routing.close()
    for fn, defaults in _SAVED_DEFAULTS:
        fn.__defaults__ = defaults
    _SAVED_DEFAULTS.clear()


def _route_assert_eq() -> None:
    import dask.array.utils
    import dask.bag.utils

    helpers: list[Callable[..., Any]] = [dask.array.utils.assert_eq, dask.bag.utils.assert_eq]
    try:
        import dask.dataframe.utils

        helpers.append(dask.dataframe.utils.assert_eq)
    except ImportError:  # no pandas: the dataframe tests skip themselves
        pass
    for fn in helpers:
        defaults = fn.__defaults__ or ()
        if "sync" not in defaults:
            raise RuntimeError(f"{fn.__module__}.assert_eq no longer defaults to 'sync'")
        _SAVED_DEFAULTS.append((fn, defaults))
        fn.__defaults__ = tuple(None if d == "sync" else d for d in defaults)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip slow tests without --runslow; apply the deselect and xfail lists."""
    kind = config.getoption("--dask-suite-scheduler")
    runslow = config.getoption("--runslow")
    skip_slow = pytest.mark.skip(reason="slow (use --runslow)")
    xfails = dict(selection.XFAIL_MULTIPROCESS)
    if kind == "conveyor":
        xfails.update(selection.CONVEYOR_BUGS)
        xfails.update(selection.CONVEYOR_BY_DESIGN)
    kept, deselected = [], []
    for item in items:
        test_id = _test_id(item)
        reason = _lookup(selection.DESELECT, test_id)
        if reason is not None:
            deselected.append(item)
            continue
        if "slow" in item.keywords and not runslow:
            item.add_marker(skip_slow)
        reason = _lookup(xfails, test_id)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
        kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def _test_id(item: pytest.Item) -> str:
    """``dask/<path>::<name>``, whatever pytest's rootdir and working directory."""
    name = item.nodeid.split("::", 1)[1]
    try:
        path = item.path.resolve().relative_to(_DASK_PARENT).as_posix()
    except ValueError:  # not one of dask's tests
        return item.nodeid
    return f"{path}::{name}"


def _lookup(table: dict[str, str], test_id: str) -> str | None:
    """The reason for ``test_id``: listed as is, without its parameters, or by a pattern."""
    reason = table.get(test_id)
    if reason is None and "[" in test_id:
        reason = table.get(test_id.split("[", 1)[0])
    if reason is None:
        for pattern, why in table.items():
            if "*" in pattern and _glob(pattern).fullmatch(test_id):
                return why
    return reason


@functools.cache
def _glob(pattern: str) -> re.Pattern[str]:
    """``pattern`` as a regular expression in which only ``*`` is special."""
    return re.compile(".*".join(map(re.escape, pattern.split("*"))))


@pytest.fixture(scope="session")
def _dask_suite_routing(request: pytest.FixtureRequest) -> Iterator[Routing]:
    routing = request.config.stash[_ROUTING_KEY]
    routing.start()
    yield routing
    try:
        routing.workers_at_end = routing.workers()
    finally:
        routing.close()


@pytest.fixture(autouse=True)
def _dask_suite_route(
    request: pytest.FixtureRequest, _dask_suite_routing: Routing
) -> Iterator[None]:
    """Send the test's computations to the session's client."""
    routing = _dask_suite_routing
    before = routing.calls
    settings: dict[str, Any] = {"scheduler": routing.client.get}
    if not request.node.path.resolve().is_relative_to(_DASK_BAG):
        # dask.bag's groupby reads this key too, and its "tasks" path ignores integer
        # or string groupers and npartitions= (dask limitations); bag's "disk" default
        # works here, as every worker runs on this machine.
        settings["dataframe.shuffle.method"] = "tasks"
    with dask.config.set(settings):
        yield
    if routing.calls > before:
        routing.tests_routed += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session if tests ran but not one computation went through the client."""
    routing = session.config.stash.get(_ROUTING_KEY, None)
    if routing is not None and routing.started and routing.tests_routed == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Report what went through the client."""
    routing = config.stash.get(_ROUTING_KEY, None)
    if routing is None or not routing.started:
        return
    terminalreporter.write_sep("=", f"dask suite on {routing.kind}")
    terminalreporter.write_line(
        f"{routing.kind}: {routing.n_workers} worker processes x 1 thread; "
        f"{routing.graphs} graphs computed and {routing.persists} persists through the "
        f"client, by {routing.tests_routed} tests; {routing.workers_at_end} workers at the end"
    )
    if routing.close_seconds is not None:
        terminalreporter.write_line(f"cluster closed in {routing.close_seconds:.1f} s")
    if routing.leftover:
        terminalreporter.write_line(f"processes left running: {routing.leftover}", red=True)
    if routing.tests_routed == 0:
        terminalreporter.write_line("ERROR: no computation reached the client", red=True)
