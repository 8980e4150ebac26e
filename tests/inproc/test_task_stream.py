"""Client.get_task_stream and the get_task_stream context manager (sync and async)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator

import pytest

from conveyor import Client, LocalCluster, get_task_stream
from conveyor.testing.cluster import in_process_cluster


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return 2 * x


def run(coro_fn, **kwargs):  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with in_process_cluster(**kwargs) as (s, workers, client):
            await coro_fn(s, workers, client)

    asyncio.run(main())


def _check_record(r: dict, workers: set[str]) -> None:  # type: ignore[type-arg]
    assert r["worker"] in workers
    assert r["status"] == "OK"
    (ss,) = r["startstops"]
    assert ss["action"] == "compute" and 0 < ss["start"] <= ss["stop"]


def test_get_task_stream_async_fields_count_and_window() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        t0 = time.time()
        fs = c.map(inc, range(20))
        ds = c.map(double, fs)
        assert await c.gather(ds) == [2 * (i + 1) for i in range(20)]
        records = await c.get_task_stream()
        addresses = {w.address for w in workers}
        assert {r["key"] for r in records} == {f.key for f in fs + ds}
        for r in records:
            _check_record(r, addresses)
            assert r["prefix"] in ("inc", "double")
            assert r["nbytes"] is not None and r["nbytes"] > 0  # still in memory
        assert sum(r["prefix"] == "inc" for r in records) == 20
        # count: the last runs, oldest first
        last = await c.get_task_stream(count=5)
        assert [r["key"] for r in last] == [r["key"] for r in records[-5:]]
        assert await c.get_task_stream(count=0) == []
        # a time window: everything overlaps [t0, now]; nothing ends before t0 - 60 s
        assert len(await c.get_task_stream(start=t0 - 1, stop=time.time() + 1)) == 40
        assert await c.get_task_stream(stop=t0 - 60) == []
        assert await c.get_task_stream(start="1h") == records
        with pytest.raises(ValueError):
            c.get_task_stream(count=-1)

    run(body)


def test_context_manager_async_sees_only_its_block() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        await c.gather(c.map(inc, range(5)))  # before the block: not in it
        async with get_task_stream(client=c) as ts:
            fs = c.map(double, range(7))
            await c.gather(fs)
        assert sorted(r["key"] for r in ts.data) == sorted(f.key for f in fs)
        assert ts.dropped == 0 and ts.data.dropped == 0
        with pytest.raises(RuntimeError, match="async with"), get_task_stream(client=c):
            pass

    run(body)


def test_context_manager_counts_runs_the_ring_dropped() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        s.state.task_stream = deque(s.state.task_stream, maxlen=5)  # a short ring
        async with get_task_stream(client=c) as ts:
            fs = c.map(inc, range(12))
            await c.gather(fs)
        assert len(ts.data) == 5 and ts.dropped == 7
        assert {r["key"] for r in ts.data} <= {f.key for f in fs}

    run(body)


@pytest.fixture
def client() -> Iterator[Client]:
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def test_sync_client_and_default_client_context_manager(client: Client) -> None:
    client.gather(client.map(inc, range(3)))
    with get_task_stream() as ts:  # the default client
        fs = client.map(double, range(10))
        assert client.gather(fs) == [2 * i for i in range(10)]
    addresses = set(client.scheduler_info()["workers"])
    assert sorted(r["key"] for r in ts.data) == sorted(f.key for f in fs)
    for r in ts.data:
        _check_record(r, addresses)
    assert ts.dropped == 0
    everything = client.get_task_stream()
    assert len(everything) == 13 and everything[-10:] == ts.data
