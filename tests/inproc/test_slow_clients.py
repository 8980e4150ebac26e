"""The scheduler's stream to a client never blocks it: a client that stops reading is
dropped once what waits for it passes ``conveyor.comm.max-outgoing-buffer``, with one
log line, and every other client goes on."""

from __future__ import annotations

import asyncio
import logging
import socket

import dask.config
import pytest

from conveyor import Client
from conveyor.testing.cluster import in_process_cluster, until

BOUND = 512 * 1024


def blob(i: int) -> bytes:
    """A result small enough to travel with its completion (about 12 kB)."""
    return i.to_bytes(4, "little") * 3000


def inc(x: int) -> int:
    return x + 1


def test_a_client_that_stops_reading_is_dropped_and_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=2) as (s, _, c):
            slow = await Client(s.address, asynchronous=True, set_as_default=False)
            try:
                peer = s.client_comms[slow.id]
                assert peer.max_backlog == BOUND
                # small socket buffers: the kernel holds little of what is not read
                sending = peer.comm._protocol.transport  # type: ignore[attr-defined]
                sending.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_SNDBUF, 65536
                )
                transport = slow.scheduler.comm._protocol.transport  # type: ignore[union-attr]
                sock = transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                transport.pause_reading()  # the client stops reading; its writes still go
                # about 7 MB of results with their completions: far more than the bound
                futures = slow.map(blob, range(600))
                await until(lambda: peer.closed, 60, "the stalled client dropped")
                assert BOUND < peer.queued_bytes < 2 * BOUND
                assert peer._buffer == []
                await until(lambda: slow.id not in s.client_comms, 5, "the client removed")
                assert slow.id not in s.state.clients
                # the other client was never held up
                assert await asyncio.wait_for(c.submit(inc, 1), 10) == 2
                assert await asyncio.wait_for(c.gather(c.map(blob, range(50))), 10) == [
                    blob(i) for i in range(50)
                ]
                del futures
            finally:
                await slow.close()

    with (
        dask.config.set({"conveyor.comm.max-outgoing-buffer": BOUND}),
        caplog.at_level(logging.WARNING, logger="conveyor"),
    ):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "max-outgoing-buffer" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "client" in lines[0] and "not reading" in lines[0]
