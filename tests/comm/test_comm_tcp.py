"""TCP specifics: big payloads, hostile and broken peers, timeouts, flow control."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import dask
import numpy as np
import pytest

from conveyor.comm import Comm, CommClosedError, connect, listen, parse_host_port
from conveyor.comm.handshake import HandshakeError
from conveyor.protocol import dumps, encode, encode_frames, loads

LOCAL = "tcp://127.0.0.1:0"


Runner = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a test coroutine (with a time limit) on the default loop and on uvloop."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if request.param == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop

    def run(coro: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(asyncio.wait_for(coro, 60))

    return run


async def echo(comm: Comm) -> None:
    try:
        while True:
            await comm.write(await comm.read())
    except CommClosedError:
        pass


def host_port(addr: str) -> tuple[str, int]:
    return parse_host_port(addr.removeprefix("tcp://"))


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Read a raw connection to its end (EOF or reset) and return what arrived."""
    data = b""
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "conveyor.comm" and r.levelno == logging.WARNING
    ]


def test_listen_address_has_the_real_port(run: Runner) -> None:
    async def main() -> None:
        async with listen(LOCAL, echo) as listener:
            host, port = host_port(listener.listen_address)
            assert host == "127.0.0.1" and port > 0
            assert listener.contact_address == listener.listen_address

    run(main())


def test_contact_address_is_a_real_ip_when_listening_on_all_interfaces(run: Runner) -> None:
    async def main() -> None:
        async with listen("tcp://0.0.0.0:0", echo) as listener:
            assert listener.listen_address.startswith("tcp://0.0.0.0:")
            host, port = host_port(listener.contact_address)
            assert host != "0.0.0.0"
            assert port == host_port(listener.listen_address)[1]
            async with await connect(listener.contact_address, timeout=5) as comm:
                await comm.write("ping")
                assert await comm.read() == "ping"

    run(main())


def test_50_mb_array_arrives_equal(run: Runner) -> None:
    async def main() -> None:
        arr = np.random.default_rng(1).random(50_000_000 // 8)
        async with (
            listen(LOCAL, echo) as listener,
            await connect(listener.contact_address, timeout=5) as comm,
        ):
            await comm.write({"op": "data", "x": dumps(arr)})
            msg = await comm.read()
            assert isinstance(msg, dict)
            back = loads(msg["x"])
            assert isinstance(back, np.ndarray)
            assert back.flags.writeable
            np.testing.assert_array_equal(back, arr)

    run(main())


def test_http_request_is_rejected_with_one_warning(
    caplog: pytest.LogCaptureFixture, run: Runner
) -> None:
    async def main() -> None:
        async with listen(LOCAL, echo) as listener:
            reader, writer = await asyncio.open_connection(*host_port(listener.listen_address))
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_until_closed(reader)  # the listener hangs up
            writer.close()
            async with await connect(listener.contact_address, timeout=5) as comm:
                await comm.write("still serving")
                assert await comm.read() == "still serving"

    with caplog.at_level(logging.DEBUG, logger="conveyor.comm"):
        run(main())
    [warning] = warnings_from(caplog)
    assert warning.startswith("Closing connection from tcp://127.0.0.1:")
    # before its handshake a peer is a stranger: it may declare a few small frames only
    assert "frames, exceeding limit 4" in warning
    assert all(r.exc_info is None for r in caplog.records if r.levelno >= logging.WARNING)


def test_oversized_frame_is_rejected(caplog: pytest.LogCaptureFixture, run: Runner) -> None:
    async def main() -> None:
        async with listen(LOCAL, echo, handshake=False, max_frame_size=1 << 20) as listener:
            reader, writer = await asyncio.open_connection(*host_port(listener.listen_address))
            writer.write(struct.pack("<IQ", 1, 5 * 10**9))
            await read_until_closed(reader)
            writer.close()

    with caplog.at_level(logging.WARNING, logger="conveyor.comm"):
        run(main())
    [warning] = warnings_from(caplog)
    assert warning.endswith("frame of 4.66 GiB exceeds limit 1.00 MiB")


def test_truncated_message_then_close_is_comm_closed(run: Runner) -> None:
    async def main() -> None:
        outcome: asyncio.Future[BaseException] = asyncio.Future()

        async def handler(comm: Comm) -> None:
            try:
                await comm.read()
            except BaseException as e:
                outcome.set_result(e)

        async with listen(LOCAL, handler, handshake=False) as listener:
            _, writer = await asyncio.open_connection(*host_port(listener.listen_address))
            writer.write(struct.pack("<IQ", 1, 100) + b"only ten b")
            await writer.drain()
            writer.close()
            error = await outcome
            assert isinstance(error, CommClosedError)
            assert "middle of a message" in str(error)

    run(main())


def test_client_sees_comm_closed_when_server_sends_half_a_message(run: Runner) -> None:
    async def main() -> None:
        async def half_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            frames = encode_frames(encode({"op": "never finished", "pad": b"x" * 1000}))
            writer.write(b"".join(frames)[:-10])
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(half_server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            comm = await connect(f"tcp://127.0.0.1:{port}", timeout=5, handshake=False)
            with pytest.raises(CommClosedError):
                await comm.read()
            await comm.close()
        finally:
            server.close()

    run(main())


def test_undecodable_message_is_rejected(caplog: pytest.LogCaptureFixture, run: Runner) -> None:
    async def main() -> None:
        async with listen(LOCAL, echo) as listener:
            reader, writer = await asyncio.open_connection(*host_port(listener.listen_address))
            writer.write(b"".join(encode_frames([b"\xc1 not msgpack"])))
            await read_until_closed(reader)
            writer.close()

    with caplog.at_level(logging.WARNING, logger="conveyor.comm"):
        run(main())
    [warning] = warnings_from(caplog)
    assert "Could not decode message" in warning


def test_silent_peer_hits_the_handshake_timeout(
    caplog: pytest.LogCaptureFixture, run: Runner
) -> None:
    async def main() -> None:
        async with listen(LOCAL, echo, handshake_timeout=0.2) as listener:
            reader, writer = await asyncio.open_connection(*host_port(listener.listen_address))
            received = await read_until_closed(reader)  # sends nothing, waits to be dropped
            writer.close()
            assert received == b""  # the listener answers a handshake, never speaks first

    with caplog.at_level(logging.WARNING, logger="conveyor.comm"):
        run(main())
    [warning] = warnings_from(caplog)
    assert "No handshake from tcp://127.0.0.1:" in warning
    assert "within 0.2 s" in warning


def test_connect_to_a_silent_server_hits_the_handshake_timeout(run: Runner) -> None:
    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_until_closed(reader)
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            with pytest.raises(HandshakeError, match="No handshake"):
                await connect(f"tcp://127.0.0.1:{port}", timeout=10, handshake_timeout=0.2)
            assert loop.time() - start < 5
        finally:
            server.close()

    run(main())


def test_connect_timeout_bounds_the_handshake_too(run: Runner) -> None:
    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_until_closed(reader)
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            with pytest.raises(CommClosedError):
                await connect(f"tcp://127.0.0.1:{port}", timeout=0.3, handshake_timeout=60)
            assert loop.time() - start < 5
        finally:
            server.close()

    run(main())


def test_data_larger_than_the_frame_limit_travels_in_shards(run: Runner) -> None:
    limit = 1 << 20

    async def main() -> None:
        arr = np.random.default_rng(2).random(5 * limit // 8 + 3)  # 5 MiB and a bit
        async with listen(LOCAL, echo, max_frame_size=limit) as listener:
            comm = await connect(listener.contact_address, timeout=5, max_frame_size=limit)
            await comm.write({"x": dumps(arr), "small": dumps(b"tiny")})
            msg = await comm.read()
            await comm.close()
        assert isinstance(msg, dict)
        np.testing.assert_array_equal(loads(msg["x"]), arr)
        assert loads(msg["small"]) == b"tiny"

    run(main())


def test_a_control_message_over_the_frame_limit_travels_in_shards(run: Runner) -> None:
    async def main() -> None:
        blob = bytes(range(256)) * 1000
        async with listen(LOCAL, echo, max_frame_size=100_000) as listener:
            comm = await connect(listener.contact_address, timeout=5, max_frame_size=100_000)
            await comm.write({"x": blob})  # inline bytes: frame 0 itself is too large
            assert await comm.read() == {"x": blob}
            await comm.close()

    run(main())


def test_message_over_the_message_limit_fails_locally(run: Runner) -> None:
    async def main() -> None:
        async with listen(LOCAL, echo) as listener:
            comm = await connect(listener.contact_address, timeout=5, max_message_size=100_000)
            with pytest.raises(ValueError, match=r"exceeds conveyor\.comm\.max-message-size"):
                await comm.write({"x": dumps(np.zeros(100_000))})
            await comm.write("still usable")
            assert await comm.read() == "still usable"
            await comm.close()

    run(main())


def test_limits_default_to_the_config(caplog: pytest.LogCaptureFixture, run: Runner) -> None:
    async def main() -> None:
        async with listen(LOCAL, echo, handshake=False) as listener:
            reader, writer = await asyncio.open_connection(*host_port(listener.listen_address))
            writer.write(struct.pack("<IQ", 1, 3 << 20))
            await read_until_closed(reader)
            writer.close()
            reader, writer = await asyncio.open_connection(*host_port(listener.listen_address))
            writer.write(struct.pack("<IQQ", 2, 1 << 20, 1 << 20))
            await read_until_closed(reader)
            writer.close()

    settings = {"conveyor.comm.max-frame-size": "2MiB", "conveyor.comm.max-message-size": "1.5MiB"}
    with caplog.at_level(logging.WARNING, logger="conveyor.comm"), dask.config.set(settings):
        run(main())
    frame, message = warnings_from(caplog)
    assert frame.endswith("frame of 3.00 MiB exceeds limit 2.00 MiB")
    assert "1.50 MiB" in message


def test_unknown_tcp_option_is_refused(run: Runner) -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match="max_frame_sise"):
            listen(LOCAL, echo, max_frame_sise=10)

    run(main())


def test_writer_waits_for_a_slow_reader(run: Runner) -> None:
    async def main() -> None:
        may_read = asyncio.Event()
        finished = asyncio.Event()
        received: list[int] = []

        async def slow(comm: Comm) -> None:
            await may_read.wait()
            for _ in range(20):
                msg = await comm.read()
                assert isinstance(msg, dict)
                received.append(loads(msg["x"]).nbytes)  # type: ignore[attr-defined]
            finished.set()

        chunk = np.ones(10_000_000 // 8)

        async with (
            listen(LOCAL, slow) as listener,
            await connect(listener.contact_address, timeout=5) as comm,
        ):

            async def write_all() -> None:
                for _ in range(20):
                    await comm.write({"x": dumps(chunk)})

            writing = asyncio.ensure_future(write_all())
            done, _ = await asyncio.wait([writing], timeout=1.0)
            assert not done  # 200 MB cannot all be buffered: write() waits
            may_read.set()
            await writing
            await finished.wait()
        assert received == [chunk.nbytes] * 20

    run(main())


def test_connections_over_the_limit_are_closed_with_one_warning(
    caplog: pytest.LogCaptureFixture, run: Runner
) -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def hold(comm: Comm) -> None:
            await comm.write({"op": "hello"})
            await release.wait()
            comm.abort()

        with dask.config.set({"conveyor.comm.max-connections": 2}):
            listener = listen(LOCAL, hold)
        await listener.start()
        try:
            held = [await connect(listener.listen_address, 5) for _ in range(2)]
            for c in held:
                assert await c.read() == {"op": "hello"}
            for _ in range(3):  # over the limit: closed at once, one warning for the run
                with pytest.raises((CommClosedError, OSError)):
                    extra = await connect(listener.listen_address, 2, retry_refused=False)
                    await asyncio.wait_for(extra.read(), 2)
            warnings = [r for r in caplog.records if "max-connections" in r.getMessage()]
            assert len(warnings) == 1
            release.set()  # the held ones end: new connections are served again
            for c in held:
                with pytest.raises(CommClosedError):
                    await c.read()
            await asyncio.sleep(0)
            again = await connect(listener.listen_address, 5)
            assert await again.read() == {"op": "hello"}
            again.abort()
        finally:
            release.set()
            listener.stop()

    with caplog.at_level(logging.WARNING, logger="conveyor.comm"):
        run(main())


def test_a_stranger_may_not_declare_a_large_frame_but_a_peer_may(
    caplog: pytest.LogCaptureFixture, run: Runner
) -> None:
    async def main() -> None:
        async with listen(LOCAL, echo) as listener:
            reader, writer = await asyncio.open_connection(*host_port(listener.listen_address))
            # no handshake yet: one frame of 100 MB declared, then a few of its bytes
            writer.write(struct.pack("<IQ", 1, 100_000_000) + b"x" * 10)
            await asyncio.wait_for(read_until_closed(reader), 5)  # its handshake, then EOF
            writer.close()
            # after the handshake the configured limits apply: 5 MB frames travel
            async with await connect(listener.contact_address, timeout=5) as comm:
                big = np.arange(5_000_000 // 8, dtype=np.float64)
                await comm.write(dumps(big))
                assert np.array_equal(loads(await comm.read()), big)

    with caplog.at_level(logging.WARNING, logger="conveyor.comm"):
        run(main())
    [warning] = warnings_from(caplog)
    assert "exceeds limit 64.00 KiB" in warning, warning


def test_a_peer_may_send_a_large_message_as_soon_as_it_has_the_answer(run: Runner) -> None:
    """The listening side answers a handshake only once it has accepted it (and lifted
    the stranger's limits): a peer that sends 1 MB the moment the answer arrives is
    served. The listener used to answer at once, before reading the peer's handshake:
    on a busy server the peer's next message could arrive while it was still a stranger
    (64 KiB frames at most) and the connection was closed (seen once in CI)."""
    from conveyor.testing.fuzz import frames_bytes, handshake_bytes

    async def main() -> None:
        async with listen(LOCAL, echo) as listener:
            for _ in range(20):
                reader, writer = await asyncio.open_connection(*host_port(listener.listen_address))
                with pytest.raises(TimeoutError):  # no answer before the peer's handshake
                    await asyncio.wait_for(reader.read(1), 0.05)
                writer.write(handshake_bytes("client"))
                count = struct.unpack("<I", await reader.readexactly(4))[0]
                lengths = struct.unpack(f"<{count}Q", await reader.readexactly(8 * count))
                assert b"handshake" in await reader.readexactly(sum(lengths))
                big = b"x" * 1_000_000
                writer.write(frames_bytes({"op": "echo", "data": big}))
                reply = await asyncio.wait_for(reader.readexactly(4), 5)  # not EOF
                assert struct.unpack("<I", reply)[0] >= 1
                writer.close()
                await writer.wait_closed()

    run(main())
