"""Actors: objects that stay on the worker that made them, called through a handle."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import cloudpickle
import pytest

from conveyor import Actor, ActorFuture, Client, LocalCluster, get_worker
from conveyor.testing.cluster import in_process_cluster

pytestmark = pytest.mark.e2e

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.n = start

    def increment(self, by: int = 1) -> int:
        self.n += by
        return self.n

    def where(self) -> str:
        return get_worker().address

    def fail(self) -> None:
        raise KeyError("no such thing")

    async def later(self) -> int:
        await asyncio.sleep(0)
        return self.n


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as c:
        yield c


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as c:
        yield c


def test_an_actor_keeps_its_state_on_its_worker(client: Client) -> None:
    fut = client.submit(Counter, 10, actor=True)
    counter = fut.result()
    assert isinstance(counter, Actor)
    call = counter.increment()
    assert isinstance(call, ActorFuture)
    assert call.result(timeout=10) == 11
    assert counter.increment(by=5).result() == 16
    assert counter.n == 16  # an attribute read runs there too
    (holder,) = client.who_has(fut)[fut.key]
    assert counter.where().result() == holder
    assert counter.later().result() == 16  # coroutine methods run on the worker's loop


def test_calls_run_one_at_a_time_in_order(client: Client) -> None:
    counter = client.submit(Counter, actor=True).result()
    calls = [counter.increment() for _ in range(50)]
    assert [c.result(timeout=10) for c in calls] == list(range(1, 51))


def test_separate_submissions_make_separate_actors(client: Client) -> None:
    a = client.submit(Counter, actor=True).result()
    b = client.submit(Counter, actor=True).result()
    a.increment().result()
    assert (a.n, b.n) == (1, 0)


def test_an_actor_method_error_is_raised_with_its_type(client: Client) -> None:
    counter = client.submit(Counter, actor=True).result()
    with pytest.raises(KeyError, match="no such thing"):
        counter.fail().result()
    assert counter.increment().result() == 1  # the actor lives on


def test_an_actor_cannot_be_copied_into_another_task(client: Client) -> None:
    fut = client.submit(Counter, actor=True)
    fut.result()
    with pytest.raises(Exception, match="cannot be copied or moved"):
        client.submit(lambda c: c, fut).result(timeout=30)
    with pytest.raises(TypeError, match="needs a class"):
        client.submit(len, [], actor=True)


def test_actors_from_an_asynchronous_client() -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=1) as (_, _, c):
            counter = await c.submit(Counter, 1, actor=True)
            assert await counter.increment() == 2
            assert await counter.n == 2

    asyncio.run(main())


def test_map_with_actor_makes_one_actor_per_row(client: Client) -> None:
    counters = client.gather(client.map(Counter, [1, 2, 3], actor=True))
    assert all(isinstance(c, Actor) for c in counters)
    assert [c.increment().result() for c in counters] == [2, 3, 4]
