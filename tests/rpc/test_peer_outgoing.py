"""A Peer's outgoing stream: bounded for a peer that stops reading, flushed on close."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import dask.config
import pytest

from conveyor.comm import Comm, CommClosedError, connect, listen
from conveyor.protocol import dumps
from conveyor.rpc import Peer, serve_peer
from conveyor.rpc.outgoing import message_nbytes, outgoing_limit

PAYLOAD = b"x" * (64 * 1024)


class GatedComm(Comm):
    """A comm whose writes wait for ``gate``: a write in flight for as long as a test
    wants, without sockets."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.written: list[Any] = []
        self.was_closed = False
        self.was_aborted = False

    async def read(self) -> object:
        await asyncio.Event().wait()  # never: nothing is read in these tests
        raise AssertionError

    async def write(self, msg: object) -> int:
        if self.was_aborted:
            raise CommClosedError("aborted")
        await self.gate.wait()
        if self.was_aborted:
            raise CommClosedError("aborted")
        self.written.append(msg)
        return 0

    async def close(self) -> None:
        self.was_closed = True

    def abort(self) -> None:
        self.was_aborted = True

    def closed(self) -> bool:
        return self.was_closed or self.was_aborted

    @property
    def local_address(self) -> str:
        return "gated://local"

    @property
    def peer_address(self) -> str:
        return "gated://peer"


async def _stalled_pair(limit: int | None) -> tuple[Peer, Comm, Any]:
    """A listening Peer with ``limit`` and a connected comm that does not read."""
    loop = asyncio.get_running_loop()
    served: asyncio.Future[Peer] = loop.create_future()

    async def serve(comm: Comm) -> None:
        peer = Peer(comm, loop)
        peer.max_backlog = limit
        served.set_result(peer)
        await serve_peer(peer, {})

    listener = listen("tcp://127.0.0.1:0", serve)
    await listener.start()
    comm = await connect(listener.contact_address, 5)
    return await served, comm, listener


def _pause_reading(comm: Comm) -> None:
    transport = comm._protocol.transport  # type: ignore[attr-defined]
    # a small receive buffer: the kernel holds little of what is not read
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    transport.pause_reading()


def test_a_peer_that_stops_reading_is_dropped_at_the_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bound = 512 * 1024

    async def main() -> None:
        peer, comm, listener = await _stalled_pair(bound)
        try:
            _pause_reading(comm)
            sent = peak = 0
            # at most 640 MB: without a bound this would hold all of it
            while not peer.closed and sent < 10_000:
                peer.send({"op": "push", "data": PAYLOAD, "i": sent})
                sent += 1
                await asyncio.sleep(0)  # one message per loop turn, as a server streams
                peak = max(peak, peer.queued_bytes)
            assert peer.closed, "a peer that never reads was not dropped"
            # what was held never went beyond the bound and one loop turn's message
            assert bound < peak <= bound + message_nbytes({"op": "push", "data": PAYLOAD})
            assert peer._buffer == []  # dropped with the peer
        finally:
            comm.abort()
            listener.stop()

    with caplog.at_level(logging.WARNING, logger="conveyor.server"):
        asyncio.run(main())
    [line] = [r.getMessage() for r in caplog.records if "max-outgoing-buffer" in r.getMessage()]
    assert "not reading" in line and "512.00 KiB" in line


def test_a_peer_that_reads_is_never_dropped() -> None:
    async def main() -> None:
        peer, comm, listener = await _stalled_pair(4 * 1024 * 1024)
        try:
            n = 300  # about 20 MB through a 4 MiB bound
            for i in range(n):
                peer.send({"op": "push", "data": PAYLOAD, "i": i})
                await asyncio.sleep(0)
            got: list[int] = []
            while len(got) < n:
                batch: Any = await comm.read()
                got += [m["i"] for m in batch]
            assert got == list(range(n))
            assert not peer.closed
        finally:
            comm.abort()
            listener.stop()

    asyncio.run(main())


def test_without_a_bound_nothing_is_measured() -> None:
    async def main() -> None:
        comm = GatedComm()
        peer = Peer(comm, asyncio.get_running_loop())
        assert peer.max_backlog is None
        for _ in range(5):
            peer.send({"op": "push", "data": PAYLOAD})
            await asyncio.sleep(0)
        assert peer.queued_bytes == 0 and not peer.closed
        peer.abort()

    asyncio.run(main())


def test_close_flushes_what_was_queued_behind_a_write_in_flight() -> None:
    async def main() -> None:
        comm = GatedComm()
        peer = Peer(comm, asyncio.get_running_loop())
        peer.send({"op": "a"})
        await asyncio.sleep(0)  # flushed: its write waits at the gate
        peer.send({"op": "b"})
        peer.send({"op": "c"})
        closing = asyncio.ensure_future(peer.close())
        await asyncio.sleep(0)
        assert not closing.done()
        comm.gate.set()
        await asyncio.wait_for(closing, 5)
        assert comm.written == [[{"op": "a"}], [{"op": "b"}, {"op": "c"}]]
        assert comm.was_closed and not comm.was_aborted and peer.closed

    asyncio.run(main())


def test_close_of_a_peer_that_takes_nothing_is_bounded() -> None:
    async def main() -> None:
        comm = GatedComm()
        peer = Peer(comm, asyncio.get_running_loop())
        peer.send({"op": "a"})
        await asyncio.sleep(0)
        peer.send({"op": "b"})
        await asyncio.wait_for(peer.close(timeout=0.1), 5)
        assert comm.was_aborted and peer.closed and comm.written == []

    asyncio.run(main())


def test_message_sizes_count_payloads() -> None:
    ser = dumps(bytearray(100_000))
    assert message_nbytes({"op": "x", "result": ser}) >= ser.nbytes
    assert message_nbytes({"op": "x", "data": [PAYLOAD, PAYLOAD]}) >= 2 * len(PAYLOAD)
    assert message_nbytes({"op": "x", "keys": ["a" * 1000] * 10}) >= 10_000
    assert message_nbytes({"op": "x", "view": memoryview(PAYLOAD)}) >= len(PAYLOAD)
    assert 0 < message_nbytes({"op": "x", "n": 1, "f": 1.5, "none": None}) < 100


def test_the_bound_comes_from_config() -> None:
    assert outgoing_limit() == 512 * 1024 * 1024
    with dask.config.set({"conveyor.comm.max-outgoing-buffer": "1MiB"}):
        assert outgoing_limit() == 1024 * 1024
    with dask.config.set({"conveyor.comm.max-outgoing-buffer": None}):
        assert outgoing_limit() is None
    with (
        dask.config.set({"conveyor.comm.max-outgoing-buffer": "lots"}),
        pytest.raises(ValueError, match="max-outgoing-buffer"),
    ):
        outgoing_limit()
