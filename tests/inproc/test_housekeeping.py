"""The scheduler's housekeeping on a real cluster: reconciling workers' memory every
``synchronize_worker_interval`` and forgetting empty prefixes every ``delete_interval``."""

from __future__ import annotations

import asyncio
import logging

import pytest

from conveyor.testing.cluster import in_process_cluster, until


def inc(x: int) -> int:
    return x + 1


def test_leaked_data_is_freed_and_lost_data_recomputed(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        kwargs = {"synchronize_worker_interval": "50ms"}
        async with in_process_cluster(n_workers=1, scheduler_kwargs=kwargs) as (s, ws, c):
            w = ws[0]
            fut = c.submit(inc, 1, key="inc-1")
            assert await fut == 2
            # a leak: data on the worker that the scheduler knows nothing of
            w.data.put("leaked-1", b"x" * 10, 10)
            # a loss: data the scheduler believes the worker holds, gone behind its back
            w.data.discard("inc-1")
            await until(lambda: "leaked-1" not in w.data, timeout=5)
            # the lost result was run again (the client still wants it) and is back
            await until(lambda: "inc-1" in w.data, timeout=5)
            assert await fut == 2
            assert s.tasks["inc-1"].state == "memory"
            assert [x.address for x in s.tasks["inc-1"].who_has] == [w.address]
            assert "reconciling" in caplog.text

    with caplog.at_level(logging.WARNING, logger="conveyor.scheduler"):
        asyncio.run(main())


def test_a_consistent_cluster_syncs_without_changes(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        kwargs = {"synchronize_worker_interval": "20ms"}
        async with in_process_cluster(n_workers=2, scheduler_kwargs=kwargs) as (s, ws, c):
            synced: list[str] = []
            handle = s.handlers["memory-synced"]

            def spy(peer: object, msg: dict[str, object]) -> object:
                synced.append(str(msg["op"]))
                return handle(peer, msg)  # type: ignore[arg-type]

            s.handlers["memory-synced"] = spy
            futs = c.map(inc, range(200))
            for _ in range(3):  # syncs cross task reports while work goes on
                await until(lambda: len(synced) >= 2, timeout=5)
                synced.clear()
            assert await c.gather(futs) == list(range(1, 201))
            total = sum(len(w.data) for w in ws)
            assert total == 200 and s.state.nprocessing == 0
        assert "reconciling" not in caplog.text

    with caplog.at_level(logging.WARNING, logger="conveyor.scheduler"):
        asyncio.run(main())


def test_empty_prefixes_are_forgotten_after_delete_interval() -> None:
    async def main() -> None:
        kwargs = {"delete_interval": "50ms"}
        async with in_process_cluster(n_workers=1, scheduler_kwargs=kwargs) as (s, _, c):
            assert await c.submit(inc, 1, key="inc-1") == 2
            assert "inc" in s.state.task_prefixes
            await c.scheduler.request({"op": "identity"})  # the release has arrived
            await until(lambda: not s.tasks, timeout=5)
            await until(lambda: "inc" not in s.state.task_prefixes, timeout=5)
            assert len(s.state.prefix_memory) == 1  # its learned duration is kept
            # seen again, the prefix starts from that duration
            assert await c.submit(inc, 2, key="inc-2") == 3
            assert len(s.state.prefix_memory) == 0

    asyncio.run(main())


def test_intervals_can_be_turned_off() -> None:
    async def main() -> None:
        kwargs = {"delete_interval": None, "synchronize_worker_interval": 0}
        async with in_process_cluster(n_workers=1, scheduler_kwargs=kwargs) as (s, _, c):
            assert s.synchronize_worker_interval in (None, 0)
            names = {t.get_coro().__name__ for t in s._tasks}  # type: ignore[union-attr]
            assert "sync_workers_loop" not in names
            assert "forget_prefixes_loop" in names  # None: the configured default
            assert await c.submit(inc, 1) == 2

    asyncio.run(main())
