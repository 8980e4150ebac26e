"""``Scheduler.transition``: an operator releases or fails a task; bad requests raise
before anything changes."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.testing.cluster import in_process_cluster


def inc(x: int) -> int:
    return x + 1


def test_an_operator_fails_a_task_and_its_client_sees_why() -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=1) as (s, _, c):
            x = c.submit(inc, 1)
            assert await x == 2
            with pytest.raises(KeyError, match="no task 'nope'"):
                s.transition("nope", "released")
            with pytest.raises(ValueError, match="finish must be one of"):
                s.transition(x.key, "memory")
            assert s.transition(x.key, "erred", reason="data corrupt", stimulus_id="ops") == "erred"
            with pytest.raises(RuntimeError, match="data corrupt"):
                await asyncio.wait_for(c.submit(inc, x), 10)
            assert s.story(x.key)[-1][1:4] == ("released", "erred", "ops")

    asyncio.run(main())
