"""A worker that pauses (memory over its pause threshold) tells the scheduler, which
sends it no new work until it resumes."""

from __future__ import annotations

import asyncio
import time

from conveyor.core import worker_events as we
from conveyor.testing.cluster import in_process_cluster, until


def inc(x: int) -> int:
    return x + 1


def test_the_scheduler_sends_a_paused_worker_nothing_until_it_resumes() -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=2) as (s, workers, c):
            paused, other = workers
            # what the memory monitor does when the process crosses the threshold
            paused.apply(we.PauseEvent(time.time(), True))
            await until(lambda: s.workers[paused.address].status == "paused", what="paused")
            futures = c.map(inc, range(20))
            assert await c.gather(futures) == list(range(1, 21))
            assert await c.who_has(futures) == {f.key: (other.address,) for f in futures}
            assert paused.address not in s.idle
            paused.apply(we.PauseEvent(time.time(), False))
            await until(lambda: s.workers[paused.address].status == "running", what="resumed")
            more = c.map(inc, range(100, 140))
            assert await c.gather(more) == list(range(101, 141))
            holders = {a for hs in (await c.who_has(more)).values() for a in hs}
            assert paused.address in holders

    asyncio.run(main())
