"""Pausing the cyclic GC: nested and overlapping pauses, and a collector left disabled."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator

import pytest

from conveyor.rpc import gcpause
from conveyor.rpc.gcpause import BurstFreezer, gc_paused, tune_server_gc


@pytest.fixture
def gc_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


@pytest.mark.usefixtures("gc_enabled")
def test_overlapping_pauses_re_enable_once_the_last_one_ends() -> None:
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with gc_paused():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    assert entered.wait(10)
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread's pause is still open
    release.set()
    t.join(10)
    assert gc.isenabled()


@pytest.mark.usefixtures("gc_enabled")
def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    with gc_paused():
        pass
    assert not gc.isenabled()
    gc.enable()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_server_processes_collect_the_young_generation_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gcpause, "_server_process", False)
    before = gc.get_threshold()
    try:
        assert not BurstFreezer().enabled  # off in a process that is not a server
        tune_server_gc(12_345)
        assert gc.get_threshold() == (12_345, before[1], before[2])
        assert BurstFreezer().enabled
    finally:
        gc.set_threshold(*before)


@pytest.fixture
def unfrozen() -> Iterator[None]:
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """A reference cycle that nothing else refers to: only the collector frees it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.mark.usefixtures("unfrozen", "gc_enabled")
def test_large_bursts_stay_frozen_until_the_scheduler_is_idle() -> None:
    freezer = BurstFreezer(min_burst=100, max_frozen=60.0, enabled=True)
    freezer.after_burst(99, now=0.0)
    assert gc.get_freeze_count() == 0  # a small update: nothing to gain
    garbage = cycle()
    freezer.after_burst(100, now=1.0)
    assert gc.get_freeze_count() > 0 and freezer.frozen_since == 1.0
    gc.collect()
    assert garbage() is not None  # the price: frozen garbage waits ...
    freezer.tick(now=30.0, idle=False)
    assert gc.get_freeze_count() > 0
    freezer.tick(now=31.0, idle=True)
    assert gc.get_freeze_count() == 0 and freezer.frozen_since is None
    gc.collect()
    assert garbage() is None  # ... for the next collection once unfrozen


@pytest.mark.usefixtures("unfrozen", "gc_enabled")
def test_frozen_objects_rejoin_the_collector_after_max_frozen_seconds() -> None:
    freezer = BurstFreezer(min_burst=1, max_frozen=60.0, enabled=True)
    freezer.after_burst(5, now=10.0)
    freezer.after_burst(5, now=50.0)  # the oldest freeze counts
    freezer.tick(now=69.0, idle=False)
    assert gc.get_freeze_count() > 0
    freezer.tick(now=70.5, idle=False)
    assert gc.get_freeze_count() == 0


@pytest.mark.usefixtures("unfrozen")
def test_a_disabled_freezer_never_freezes() -> None:
    freezer = BurstFreezer(min_burst=1, enabled=False)
    freezer.after_burst(10**6, now=0.0)
    assert gc.get_freeze_count() == 0 and freezer.frozen_since is None
