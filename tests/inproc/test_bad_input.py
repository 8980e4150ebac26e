"""A scheduler facing bad peers: close them, log one line, keep serving everyone else."""

from __future__ import annotations

import asyncio
import logging
import pickle
import struct
from pathlib import Path

import pytest

from conveyor import Scheduler
from conveyor.comm import connect
from conveyor.protocol import encode, encode_frames
from conveyor.rpc.peer import Peer, serve_peer
from conveyor.testing.cluster import in_process_cluster


def inc(x: int) -> int:
    return x + 1


async def _raw_exchange(address: str, payload: bytes) -> bytes:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(payload)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)  # returns at EOF: the server closed
    writer.close()
    return data


def _handshake_bytes() -> bytes:
    frames = encode_frames(encode({"op": "handshake", "protocol": 1, "role": "client"}))
    return b"".join(bytes(f) for f in frames)


GARBAGE = {
    "http": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "random": bytes(range(256)) * 4,
    "oversized-frame": struct.pack("<IQ", 1, 1 << 40),
    "too-many-frames": struct.pack("<I", 1 << 30),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_closes_connection_and_scheduler_keeps_serving(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=1) as (s, _workers, c):
            with caplog.at_level(logging.WARNING, logger="conveyor"):
                await _raw_exchange(s.address, GARBAGE[kind])
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert not errors, [r.getMessage() for r in errors]
            assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.WARNING)
            assert await c.submit(inc, 1) == 2

    asyncio.run(main())


def test_truncated_frame_after_handshake() -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=1) as (s, _workers, c):
            hs = _handshake_bytes()
            # a header announcing 100 bytes, then only 10 of them, then EOF
            host, port = s.address.removeprefix("tcp://").rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(hs + struct.pack("<IQ", 1, 100) + b"x" * 10)
            await writer.drain()
            writer.write_eof()
            await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert await c.submit(inc, 2) == 3
            assert len(s.clients) == 1

    asyncio.run(main())


def test_unregistered_peer_cannot_report_task_results(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with Scheduler(host="127.0.0.1", port=0) as s:
            caplog.set_level(logging.WARNING, logger="conveyor")
            hs = _handshake_bytes()
            msg = [{"op": "task-finished", "key": "x", "nbytes": 1, "start": 0, "stop": 0}]
            body = b"".join(bytes(f) for f in encode_frames(encode(msg)))
            host, port = s.address.removeprefix("tcp://").rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(hs + body)
            await writer.drain()
            writer.write_eof()
            await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert not s.tasks and not s.workers
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert any("only for a registered worker" in m for m in warnings), warnings
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    asyncio.run(main())


def test_unknown_scheduler_keyword_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="unexpected keyword"):
        Scheduler(no_such_option=1)


class _Trap:
    """Unpickling this creates a file: proof that someone deserialized it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def test_scheduler_holds_run_specs_as_opaque_bytes(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Trap(str(marker)))

    async def main() -> None:
        async with Scheduler(host="127.0.0.1", port=0) as s:
            comm = await connect(s.address, 5, role="client")
            peer = Peer(comm, asyncio.get_running_loop())
            serving = asyncio.ensure_future(serve_peer(peer, {}))
            await peer.request({"op": "register-client", "client": "evil"})
            task = {"key": "trap", "spec": payload, "deps": [], "order": 0}
            peer.send({"op": "update-graph", "tasks": [task], "keys": ["trap"]})
            await peer.request({"op": "ncores"})  # a round trip: the graph was handled
            assert s.tasks["trap"].run_spec == payload
            assert s.tasks["trap"].state in ("queued", "no-worker")
            await peer.close()
            serving.cancel()

    asyncio.run(main())
    assert not marker.exists()
