"""A client that closes fails its pending futures: nothing waits on it forever."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from conveyor import CancelledError, Client, Future, LocalCluster
from conveyor.testing.cluster import in_process_cluster


def inc(x: int) -> int:
    return x + 1


def _never_runs(c: Client) -> Future:
    """A future that stays pending: no worker has the resource it needs."""
    return c.submit(inc, 1, resources={"unobtainium": 1})


async def _outcome(fut: Future) -> BaseException | Any:
    try:
        return await fut
    except BaseException as e:
        return e


def test_closing_an_async_client_fails_its_pending_futures() -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=1) as (s, _, _c):
            other = await Client(s.address, asynchronous=True, set_as_default=False)
            fut = _never_runs(other)
            done = other.submit(inc, 2)
            assert await done == 3
            waiter = asyncio.ensure_future(_outcome(fut))
            await asyncio.sleep(0)  # awaiting the future now
            await other.close()
            error = await asyncio.wait_for(waiter, 5)
            assert isinstance(error, CancelledError), error
            assert "closed" in str(error)
            assert fut.status == "cancelled" and done.status == "finished"
            # awaited after the close: fails at once too
            later = await asyncio.wait_for(_outcome(fut), 5)
            assert isinstance(later, CancelledError)

    asyncio.run(main())


def test_closing_a_sync_client_fails_its_pending_futures() -> None:
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        client = Client(cluster, set_as_default=False)
        fut = _never_runs(client)
        outcome: list[BaseException] = []
        waiting = threading.Event()

        def wait_for_it() -> None:
            waiting.set()
            try:
                fut.result()
            except BaseException as e:
                outcome.append(e)

        t = threading.Thread(target=wait_for_it, name="test-waiter")
        t.start()
        assert waiting.wait(5)
        client.close()
        t.join(10)
        assert not t.is_alive(), "result() still waits on a closed client"
        [error] = outcome
        assert isinstance(error, CancelledError) and "closed" in str(error)
        assert fut.cancelled()
