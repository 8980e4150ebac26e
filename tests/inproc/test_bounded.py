"""``conveyor.testing.bounded``: a scenario that hangs fails in time, with a dump of the
scheduler's state in its message; one that finishes in time passes untouched."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from conveyor import Client, LocalCluster
from conveyor.testing.bounded import ScenarioTimeout, bounded, scheduler_dump
from conveyor.testing.cluster import in_process_cluster

#: held shut by the tests: a task waiting on it never finishes on its own
GATE = threading.Event()


def stuck() -> int:
    GATE.wait(60)
    return 1


def inc(x: int) -> int:
    return x + 1


@pytest.fixture
def client() -> Iterator[Client]:
    GATE.clear()
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster,
        Client(cluster, set_as_default=False) as c,
    ):
        try:
            yield c
        finally:
            GATE.set()  # the task thread ends before the cluster closes


def test_a_call_blocked_without_timeout_is_interrupted_with_the_dump(client: Client) -> None:
    fut = client.submit(stuck, key="stuck-1")
    with pytest.raises(ScenarioTimeout) as info, bounded(client, 0.5, "the stuck gather"):
        client.gather([fut])  # no timeout: the bound interrupts it
    text = str(info.value)
    assert "the stuck gather did not finish within 0.5 s" in text
    assert "'processing': 1" in text and "stuck-1" in text  # the dump names the task
    GATE.set()
    assert fut.result(timeout=10) == 1  # the cluster is still usable


def test_a_timeout_inside_becomes_a_failure_with_the_dump(client: Client) -> None:
    fut = client.submit(stuck, key="stuck-2")
    with pytest.raises(ScenarioTimeout, match="stuck-2") as info, bounded(client, 30) as deadline:
        fut.result(timeout=min(0.2, deadline.remaining()))
    assert isinstance(info.value.__cause__, TimeoutError)


def test_a_scenario_that_finishes_in_time_passes(client: Client) -> None:
    with bounded(client, 30) as deadline:
        fut = client.submit(inc, 1)
        assert fut.result(timeout=deadline.remaining()) == 2
    dump = scheduler_dump(client)
    assert dump["tasks"] == {"memory": 1} and dump["unfinished"] == 0
    assert [w["status"] for w in dump["workers"].values()] == ["running"]


def test_an_asynchronous_scenario_is_cancelled_at_its_bound() -> None:
    async def main() -> None:
        GATE.clear()
        async with in_process_cluster(n_workers=1, nthreads=2) as (_s, _workers, c):
            try:
                fut = c.submit(stuck, key="stuck-3")
                with pytest.raises(ScenarioTimeout, match="stuck-3"):
                    async with bounded(c, 0.3, "awaiting"):
                        await fut
                async with bounded(c, 30):
                    assert await c.submit(inc, 2) == 3
            finally:
                GATE.set()

    asyncio.run(main())
