"""Done callbacks run on threads of their own: callbacks that block cannot hold up
``as_completed``, waiting ``as_completed`` iterations cannot hold up callbacks, and the
threads are gone once the client closes."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

from conveyor import Client, Future, LocalCluster, as_completed
from conveyor.testing.cluster import in_process_cluster

#: more than the threads of asyncio's default executor
MANY = min(32, (os.cpu_count() or 1) + 4) + 2


#: released by the test that submits ``wait_for_gate`` (tasks run in this process)
GATE = threading.Event()


def inc(x: int) -> int:
    return x + 1


def wait_for_gate() -> int:
    GATE.wait(30)
    return 1


def _callback_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("conveyor-callback")]


async def _collect(it: AsyncIterator[Any]) -> list[Any]:
    return [x async for x in it]


def test_blocking_done_callbacks_do_not_stall_as_completed() -> None:
    release = threading.Event()

    async def main() -> None:
        async with in_process_cluster(n_workers=1) as (_, _, c):
            try:
                first = c.map(inc, range(MANY))
                await c.gather(first)
                entered = threading.Semaphore(0)

                def block(f: Future) -> None:
                    entered.release()
                    release.wait(30)

                for f in first:
                    f.add_done_callback(block)
                later = c.map(inc, range(100, 110))
                seen = await asyncio.wait_for(_collect(as_completed(later)), 10)
                assert sorted(f.key for f in seen) == sorted(f.key for f in later)
                assert _callback_threads()  # the callbacks run (and block) meanwhile
            finally:
                release.set()

    asyncio.run(main())
    assert not _callback_threads()


def test_waiting_as_completed_iterations_do_not_stall_done_callbacks() -> None:
    GATE.clear()

    async def main() -> None:
        async with in_process_cluster(n_workers=1, nthreads=2) as (_, _, c):
            loop = asyncio.get_running_loop()
            try:
                blocked = c.submit(wait_for_gate, pure=False)
                waiting = [
                    asyncio.ensure_future(_collect(as_completed([blocked]))) for _ in range(MANY)
                ]
                await asyncio.sleep(0)  # every iteration has started waiting
                called: asyncio.Future[Any] = loop.create_future()
                f = c.submit(inc, 1)
                f.add_done_callback(lambda f: loop.call_soon_threadsafe(called.set_result, f.key))
                assert await asyncio.wait_for(called, 10) == f.key
                GATE.set()
                for task in waiting:
                    assert await asyncio.wait_for(task, 10) == [blocked]
            finally:
                GATE.set()

    asyncio.run(main())


def test_a_synchronous_client_stops_its_callback_threads_on_close() -> None:
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        client = Client(cluster, set_as_default=False)
        called = threading.Event()
        release = threading.Event()
        try:
            f = client.submit(inc, 1)

            def cb(f: Future) -> None:
                called.set()
                release.wait(30)

            f.add_done_callback(cb)
            assert called.wait(10)
            # a sync as_completed is not held up by the blocked callback either
            assert [g.key for g in as_completed([client.submit(inc, 2)])] != []
            assert _callback_threads()
        finally:
            release.set()
            client.close()
        assert not _callback_threads()
