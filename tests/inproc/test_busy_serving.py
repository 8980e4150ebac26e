"""``conveyor.worker.connections.incoming``: a worker serves at most that many transfers
to other workers at once and answers the rest "busy"; they fetch again later (or from
another holder) and the computation is unaffected. Clients are served regardless, and
not counted."""

from __future__ import annotations

import asyncio

import dask.config
import pytest

from conveyor import Client, Worker
from conveyor.server.data_serving import DataServer
from conveyor.server.scheduler import Scheduler
from conveyor.testing.cluster import in_process_cluster, until


def blob(n: int) -> bytes:
    return b"x" * n


def size(b: bytes) -> int:
    return len(b)


def test_fetches_beyond_the_bound_are_answered_busy_and_retried() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        holder, *others = workers
        server = holder.data_server
        assert server.limit == 1
        x = c.submit(blob, 1_000_000, workers=[holder.address])
        await x
        server.serving = 1  # as if a transfer were being written: the bound is reached
        ys = [c.submit(size, x, workers=[w.address]) for w in others]
        await until(lambda: server.busy_answers >= len(others), 10, "busy answers")
        assert not any(y.done() for y in ys)
        # a client is served although the bound is reached
        assert await c.gather(x, direct=True) == blob(1_000_000)
        assert server.serving == 1  # and not counted
        server.serving -= 1  # the pretend transfer is over: the retries are served
        assert await asyncio.wait_for(c.gather(ys), 30) == [1_000_000] * len(others)
        assert server.serving == 0
        for w in others:
            assert w.state is not None and not w.state.busy_workers
        # busy answers are no failure: nothing was reported missing or recomputed
        assert s.state.tasks[x.key].who_has  # still held
        story = [t[2] for t in s.state.story(x.key)]
        assert "released" not in story and "erred" not in story

    with dask.config.set({"conveyor.worker.connections.incoming": 1}):
        asyncio.run(_run(body, 3))


def test_concurrent_fetches_of_large_data_from_one_worker() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        holder, *others = workers
        xs = [c.submit(blob, 8_000_000 + i, workers=[holder.address]) for i in range(4)]
        await c.gather(xs)
        ys = [c.submit(size, x, workers=[w.address]) for x in xs for w in others]
        assert await asyncio.wait_for(c.gather(ys), 60) == [
            8_000_000 + i for i in range(4) for _ in others
        ]
        assert holder.data_server.serving == 0  # every reply was counted out when written

    with dask.config.set({"conveyor.worker.connections.incoming": 1}):
        asyncio.run(_run(body, 4))


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"connections.incoming must be at least 1"):
        DataServer({}, lambda key: None, 0)  # type: ignore[arg-type]


async def _run(body: object, n: int) -> None:
    async with in_process_cluster(n_workers=n) as (s, workers, c):
        await body(s, workers, c)  # type: ignore[operator]
