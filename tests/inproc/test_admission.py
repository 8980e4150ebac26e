"""Workers serve the cluster's own peers only (``conveyor.server.admission``): a peer
must show the cluster token the scheduler gives every worker and client that registers;
reaching a worker's port is not enough."""

from __future__ import annotations

import asyncio
import logging

import pytest

from conveyor.comm import CommClosedError, connect
from conveyor.testing.cluster import in_process_cluster


def test_a_worker_serves_only_peers_showing_the_cluster_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=2) as (s, workers, c):
            w = workers[0]
            assert w.cluster_token == s.cluster_token
            # a stranger completes the handshake, then is shut out before any message
            comm = await connect(w.address, 5, role="client")
            await comm.write({"op": "identity", "reply": 1})
            with pytest.raises(CommClosedError):
                await asyncio.wait_for(comm.read(), 5)
            # a wrong token does no better
            comm = await connect(w.address, 5, role="client", handshake_extra={"token": "guess"})
            await comm.write({"op": "identity", "reply": 1})
            with pytest.raises(CommClosedError):
                await asyncio.wait_for(comm.read(), 5)
            # the token the scheduler gave: served
            comm = await connect(
                w.address, 5, role="client", handshake_extra={"token": s.cluster_token}
            )
            await comm.write({"op": "identity", "reply": 1})
            batch = await asyncio.wait_for(comm.read(), 5)
            comm.abort()
            [reply] = batch if isinstance(batch, (list, tuple)) else [batch]
            assert reply["result"]["address"] == w.address
            # the cluster's own traffic goes on: scatter straight to a worker, transfers
            [x] = await c.scatter([10], workers=[w.address])
            y = c.submit(lambda v: v + 1, x, workers=[workers[1].address])
            assert await y == 11

    with caplog.at_level(logging.WARNING, logger="conveyor.server"):
        asyncio.run(main())
    refused = [r for r in caplog.records if "showed no token of this cluster" in r.getMessage()]
    assert len(refused) == 2


def test_each_scheduler_makes_its_own_token() -> None:
    async def main() -> None:
        async with (
            in_process_cluster(n_workers=1) as (s1, _, _c1),
            in_process_cluster(n_workers=1) as (s2, w2, _c2),
        ):
            assert s1.cluster_token != s2.cluster_token and len(s1.cluster_token) >= 32
            # a peer of one cluster is a stranger to the other's workers
            comm = await connect(
                w2[0].address, 5, role="client", handshake_extra={"token": s1.cluster_token}
            )
            await comm.write({"op": "identity", "reply": 1})
            with pytest.raises(CommClosedError):
                await asyncio.wait_for(comm.read(), 5)

    asyncio.run(main())
