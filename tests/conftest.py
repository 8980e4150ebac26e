"""Shared fixtures: every test gets validated state machines and is checked for leaks."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dask.config
import pytest

# Some test modules import dask.dataframe, so every LocalCluster's worker processes would
# import it at start (``local.warm-imports-if-loaded``): about a second per cluster that
# no test measures. Tests of that setting set it themselves.
dask.config.set({"conveyor.local.warm-imports-if-loaded": []})


@pytest.fixture(autouse=True)
def _validate_and_check_threads() -> Iterator[None]:
    """Run the state machines' invariant checks, and fail on leaked non-daemon threads."""
    before = set(threading.enumerate())
    with dask.config.set({"conveyor.scheduler.validate": True}):
        yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    for t in leaked:
        t.join(timeout=5)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"threads left running: {still}"
