"""Tier 2: scheduler and worker lifecycles: idle timeout, worker time-to-live, shutdown."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

import dask
import pytest

from conveyor import Client, Scheduler, SchedulerPlugin, Worker
from conveyor.core import events as se
from conveyor.testing.cluster import until


def test_idle_timeout_closes_an_unused_scheduler() -> None:
    async def main() -> None:
        async with Scheduler(host="127.0.0.1", port=0, idle_timeout="0.3s") as s:
            await asyncio.wait_for(s.finished(), 10)
            assert s.status == "closed"

    asyncio.run(main())


def test_idle_timeout_waits_while_a_client_is_connected() -> None:
    async def main() -> None:
        async with Scheduler(host="127.0.0.1", port=0, idle_timeout=0.3) as s:
            checks = _record_idle_checks(s)
            async with Client(s.address, asynchronous=True, set_as_default=False):
                done = asyncio.ensure_future(s.finished())
                start = time.time()
                # idle checks run past three idle timeouts: a client is connected
                await until(lambda: bool(checks) and checks[-1][0] > start + 0.9, 10, "checks")
                assert not any(closing for _, closing in checks)
                assert not done.done()
            await asyncio.wait_for(done, 10)

    asyncio.run(main())


def test_silent_worker_is_removed_after_worker_ttl() -> None:
    async def main() -> None:
        async with Scheduler(host="127.0.0.1", port=0, worker_ttl="0.5s") as s:
            removed: list[str] = []

            class Watch(SchedulerPlugin):
                def remove_worker(self, scheduler: Any, worker: str) -> None:
                    removed.append(worker)

            await s.add_plugin(Watch())
            async with Worker(s.address, nthreads=1, heartbeat_interval="1h") as quiet:
                await until(lambda: quiet.address in s.workers, what="registered")
                await until(lambda: quiet.address not in s.workers, 10, "removed by ttl")
                assert removed == [quiet.address]  # plugins hear of it at once
                assert quiet.address not in s.stream_comms
                await asyncio.wait_for(quiet.finished(), 10)  # told to close, it did
            assert removed == [quiet.address]  # and only once
            async with Worker(s.address, nthreads=1, heartbeat_interval="50ms") as chatty:
                ticks = _record_ticks(s)
                start = time.time()
                # ttl checks run past two ttls; heartbeats keep it
                await until(lambda: bool(ticks) and ticks[-1] > start + 1.0, 10, "two ttls")
                assert chatty.address in s.workers

    asyncio.run(main())


def _record_idle_checks(s: Scheduler) -> list[tuple[float, bool]]:
    """(time, whether it decided to close) of each idle check ``s`` runs from now on."""
    checks: list[tuple[float, bool]] = []
    check = s._check_idle

    def recording(now: float) -> bool:
        closing = check(now)
        checks.append((now, closing))
        return closing

    s._check_idle = recording  # type: ignore[method-assign]
    return checks


def _record_ticks(s: Scheduler) -> list[float]:
    """The clock of each ``Tick`` (worker-ttl check) ``s`` applies from now on."""
    ticks: list[float] = []
    apply = s.apply

    def recording(event: Any) -> None:
        apply(event)
        if isinstance(event, se.Tick):
            ticks.append(event.now)

    s.apply = recording  # type: ignore[method-assign]
    return ticks


def test_worker_closes_when_the_scheduler_goes_away() -> None:
    async def main() -> None:
        s = await Scheduler(host="127.0.0.1", port=0)
        w = await Worker(s.address, nthreads=1)
        await s.close()
        await asyncio.wait_for(w.finished(), 10)
        assert w.status == "closed"

    asyncio.run(main())


def test_worker_name_must_be_unique() -> None:
    async def main() -> None:
        async with Scheduler(host="127.0.0.1", port=0) as s, Worker(s.address, name="alice"):
            try:
                await Worker(s.address, name="alice")
            except Exception as e:
                assert "alice" in str(e)
            else:
                raise AssertionError("a second worker named alice registered")
            assert len(s.workers) == 1

    asyncio.run(main())


def test_worker_imports_warm_modules_before_it_registers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # one module that imports, one that is not installed, one whose import fails
    (tmp_path / "conveyor_warm_probe.py").write_text("LOADED = True\n")
    (tmp_path / "conveyor_warm_broken.py").write_text("raise RuntimeError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("conveyor_warm_probe", "conveyor_warm_broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    names = ["conveyor_warm_absent", "conveyor_warm_broken", "conveyor_warm_probe"]

    async def main() -> None:
        async with Scheduler(host="127.0.0.1", port=0) as s:
            with dask.config.set({"conveyor.worker.warm-imports": names}):
                async with Worker(s.address, nthreads=1) as w:
                    assert "conveyor_warm_probe" in sys.modules
                    assert w.address in s.workers and w.status == "running"

    with caplog.at_level(logging.WARNING, logger="conveyor.worker"):
        asyncio.run(main())
    assert "conveyor_warm_absent" not in sys.modules
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["Importing 'conveyor_warm_broken' at start failed"]
