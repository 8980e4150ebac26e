"""Tier 2: structured events (log_event, get_events, topic subscriptions) over tcp."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import dask.config
import pytest

from conveyor import Client, LocalCluster
from conveyor.server.plugin import SchedulerPlugin
from conveyor.testing.cluster import in_process_cluster, until


def run(coro_fn: Any, **kwargs: Any) -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=1, **kwargs) as (s, workers, client):
            await coro_fn(s, workers, client)

    asyncio.run(main())


def test_events_are_kept_in_order_per_topic() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        async with Client(s.address, asynchronous=True, set_as_default=False) as c2:
            for i in range(5):
                await c.log_event("progress", {"step": i})
            await c2.log_event("progress", "done")
            await c2.log_event(["a", "b"], [1, 2])
            events = await c.get_events("progress")
            assert isinstance(events, tuple) and len(events) == 6
            assert [msg for _, msg in events] == [{"step": i} for i in range(5)] + ["done"]
            times = [t for t, _ in events]
            assert times == sorted(times)
            assert await c.get_events("a") == await c.get_events("b")
            assert (await c.get_events("a"))[0][1] in ([1, 2], (1, 2))
            assert await c.get_events("nothing") == ()
            every = await c.get_events()
            assert set(every) == {"progress", "a", "b"} and every["progress"] == events

    run(body)


def test_log_event_refuses_what_msgpack_cannot_carry() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        with pytest.raises(TypeError, match="msgpack serializable"):
            c.log_event("t", {1, 2})
        with pytest.raises(TypeError, match="msgpack serializable"):
            c.log_event("t", object())
        with pytest.raises(TypeError, match="topic"):
            c.log_event(3, "x")
        assert await c.get_events("t") == ()

    run(body)


def test_the_log_of_a_topic_is_bounded_by_config() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        for i in range(5):
            await c.log_event("bounded", i)
        assert [m for _, m in await c.get_events("bounded")] == [2, 3, 4]
        assert s.extensions["events"].topics["bounded"].count == 5

    with dask.config.set({"conveyor.scheduler.events-log-length": 3}):
        run(body)


def test_subscribers_get_new_events_in_order() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        async with Client(s.address, asynchronous=True, set_as_default=False) as c2:
            plain: list[Any] = []
            awaited: list[Any] = []

            async def coroutine_handler(event: tuple[float, Any]) -> None:
                await asyncio.sleep(0)
                awaited.append(event[1])

            await c.log_event("jobs", "before")  # not pushed: logged before subscribing
            c.subscribe_topic("jobs", lambda event: plain.append(event))
            c.subscribe_topic("other", coroutine_handler)
            await c.get_events("jobs")  # a round trip: the subscriptions have arrived
            for i in range(10):
                await c2.log_event("jobs", i)
            await c2.log_event("other", "x")
            await until(lambda: awaited == ["x"], what="the coroutine handler ran")
            assert [m for _, m in plain] == list(range(10))  # sent before "other": in
            assert all(isinstance(t, float) for t, _ in plain)

            c.unsubscribe_topic("jobs")
            await c2.log_event("jobs", "after")
            await c2.log_event("other", "y")
            await until(lambda: awaited == ["x", "y"])
            assert [m for _, m in plain] == list(range(10))  # "after" was not delivered
            with pytest.raises(ValueError, match="No event handler"):
                c.unsubscribe_topic("jobs")

            subscribed = s.extensions["events"].topics["other"].subscribers
            assert subscribed == {c.id}
        c.unsubscribe_topic("other")
        await until(lambda: not s.extensions["events"].topics["other"].subscribers)

    run(body)


def test_a_client_that_leaves_is_unsubscribed() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        c2 = await Client(s.address, asynchronous=True, set_as_default=False)
        c2.subscribe_topic("t", lambda event: None)
        await c2.log_event("t", 1)  # after the subscription, on the same connection
        assert s.extensions["events"].topics["t"].subscribers == {c2.id}
        await c2.close()
        await until(lambda: not s.extensions["events"].topics["t"].subscribers)

    run(body)


class Recorder(SchedulerPlugin):
    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def log_event(self, topic: str, msg: Any) -> None:
        self.seen.append((topic, msg))


def test_scheduler_plugins_see_logged_events() -> None:
    recorder = Recorder()

    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        await c.log_event(["x", "y"], {"n": 1})
        s.extensions["events"].log_event("z", "from the scheduler")
        assert recorder.seen == [("x", {"n": 1}), ("y", {"n": 1}), ("z", "from the scheduler")]

    run(body, scheduler_kwargs={"plugins": [recorder]})


# ------------------------------------------------------- synchronous clients


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as c:
        yield c


def inc(x: int) -> int:
    return x + 1


def test_sync_handlers_run_off_the_loop_without_blocking_it(cluster: LocalCluster) -> None:
    with Client(cluster) as c, Client(cluster, set_as_default=False) as c2:
        release = threading.Event()
        seen: list[Any] = []
        threads: set[bool] = set()
        done = threading.Event()

        def handler(event: tuple[float, Any]) -> None:
            assert c._runner is not None
            threads.add(c._runner.in_loop_thread())
            release.wait(10)  # blocks this handler, not the client
            seen.append(event[1])
            if event[1] == 4:
                done.set()

        c.subscribe_topic("slow", handler)
        c.get_events("slow")  # a round trip: the subscription has arrived
        for i in range(5):
            c2.log_event("slow", i)
        assert c.submit(inc, 1).result(timeout=10) == 2  # the loop still turns
        assert seen == []
        release.set()
        assert done.wait(10)
        assert seen == [0, 1, 2, 3, 4]
        assert threads == {False}
        assert [m for _, m in c.get_events("slow")] == [0, 1, 2, 3, 4]
