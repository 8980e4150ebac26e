"""Shared fixtures: every test gets validated state machines and is checked for leaks;
``stress`` tests run only when selected with ``-m stress``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import dask.config
import pytest

# Some test modules import dask.dataframe, so every LocalCluster's worker processes would
# import it at start (``local.warm-imports-if-loaded``): about a second per cluster that
# no test measures. Tests of that setting set it themselves.
dask.config.set({"conveyor.local.warm-imports-if-loaded": []})

#: how long threads started by a test may take to finish once it returned, in all
THREAD_GRACE = 5.0

#: Names of threads that are process-wide and started at most once, on first use, and
#: so outlive the test that happened to start them. Nothing else may survive a test,
#: daemon or not.
PROCESS_WIDE_THREADS = {
    # conveyor.comm.prefault: one helper thread per process pages in large receive
    # buffers; it is started when the first large frame arrives and never stops.
    "conveyor-prefault",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out tests marked ``stress`` unless the marker expression names them
    (``pytest -m stress``): they take minutes, so the normal run and CI skip them."""
    if "stress" in (config.option.markexpr or ""):
        return
    kept = [item for item in items if item.get_closest_marker("stress") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


@pytest.fixture(autouse=True)
def _validate_and_check_threads() -> Iterator[None]:
    """Run the state machines' invariant checks, and fail on threads the test leaves
    running, daemon threads included (conveyor's threads are all daemons): each gets a
    bounded join first, for threads that are finishing."""
    before = set(threading.enumerate())
    with dask.config.set({"conveyor.scheduler.validate": True}):
        yield
    leaked = [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and t.name not in PROCESS_WIDE_THREADS
    ]
    deadline = time.monotonic() + THREAD_GRACE
    for t in leaked:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    still = [f"{t.name}{' (daemon)' if t.daemon else ''}" for t in leaked if t.is_alive()]
    assert not still, f"threads left running: {still}"
