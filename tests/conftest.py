"""Shared fixtures: every test gets validated state machines and is checked for leaks."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dask.config
import pytest


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
