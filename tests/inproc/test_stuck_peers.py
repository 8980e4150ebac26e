"""Requests have timeouts: a peer that stops answering is taken for stuck, its
connection is closed, and the work goes on elsewhere."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import dask.config
import pytest

from conveyor import Client, Worker
from conveyor.comm import connect, listen
from conveyor.rpc import Msg, Peer, serve_peer
from conveyor.server.scheduler import Scheduler
from conveyor.testing.cluster import in_process_cluster


def inc(x: int) -> int:
    return x + 1


def test_a_request_to_a_silent_peer_times_out_and_closes_the_connection() -> None:
    async def main() -> None:
        never = asyncio.Event()

        async def silent(peer: Peer, msg: Msg) -> None:
            await never.wait()

        async def serve(comm: Any) -> None:
            await serve_peer(Peer(comm, asyncio.get_running_loop()), {"ask": silent})

        async with listen("tcp://127.0.0.1:0", serve) as listener:
            comm = await connect(listener.contact_address, 5)
            peer = Peer(comm, asyncio.get_running_loop())
            with pytest.raises(TimeoutError, match=r"did not answer 'ask' within 0\.2 s"):
                await peer.request({"op": "ask"}, timeout=0.2)
            assert peer.closed

    asyncio.run(main())


def test_a_fetch_from_a_stuck_worker_fails_over(caplog: pytest.LogCaptureFixture) -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        holder, other = workers
        x = c.submit(inc, 1, workers=[holder.address], allow_other_workers=True)
        await x
        serve = holder._handlers["get-data"]
        stuck = asyncio.Event()

        async def first_stuck(peer: Peer, msg: Msg) -> Any:
            if not stuck.is_set():
                stuck.set()
                await asyncio.Event().wait()  # never answers this one
            return serve(peer, msg)

        holder._handlers["get-data"] = first_stuck
        y = c.submit(inc, x, workers=[other.address])
        assert await asyncio.wait_for(y, 30) == 3
        assert stuck.is_set()

    with (
        dask.config.set({"conveyor.comm.timeouts.tcp": "300ms"}),
        caplog.at_level(logging.WARNING, logger="conveyor"),
    ):
        asyncio.run(_run(body))
    assert any("No reply to 'get-data'" in r.getMessage() for r in caplog.records)


async def _run(body: Any) -> None:
    async with in_process_cluster(n_workers=2) as (s, workers, c):
        await body(s, workers, c)
