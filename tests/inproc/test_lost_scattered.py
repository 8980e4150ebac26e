"""Scattered data has no lineage: when its only holder leaves, its futures (and what
depends on them) fail with a clear error instead of waiting; a replica elsewhere
(``replicate``) keeps it."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.testing.cluster import in_process_cluster, until


def inc(x: int) -> int:
    return x + 1


def test_scattered_data_whose_only_holder_left_fails_clearly() -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=2) as (_, workers, c):
            [fut] = await c.scatter([41], workers=[workers[0].address])
            assert await c.submit(inc, fut) == 42
            await workers[0].close()
            later = c.submit(inc, fut, pure=False)
            for f in (fut, later):
                with pytest.raises(RuntimeError, match="was lost and it cannot be recomputed"):
                    await asyncio.wait_for(f, 10)

    asyncio.run(main())


def test_a_replicated_scattered_value_survives_the_loss_of_a_holder() -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=2) as (s, workers, c):
            [fut] = await c.scatter([41], workers=[workers[0].address])
            await c.replicate([fut], n=2)
            await until(lambda: len(s.tasks[fut.key].who_has) == 2, what="two copies")
            await workers[0].close()
            assert await asyncio.wait_for(c.submit(inc, fut, pure=False), 10) == 42
            assert await asyncio.wait_for(fut, 10) == 41

    asyncio.run(main())
