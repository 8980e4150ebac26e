"""Behaviour every transport shares, run over tcp and inproc."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
from typing import Any

import numpy as np
import pytest

from conveyor.comm import (
    Backend,
    Comm,
    CommClosedError,
    HandshakeError,
    Listener,
    connect,
    listen,
    parse_address,
    register_backend,
)
from conveyor.comm.core import Handler
from conveyor.protocol import Serialized, dumps, loads

ADDRESSES = ["tcp://127.0.0.1:0", "inproc://"]


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


async def echo(comm: Comm) -> None:
    try:
        while True:
            await comm.write(await comm.read())
    except CommClosedError:
        pass


@pytest.mark.parametrize("addr", ADDRESSES)
def test_echo_round_trip(addr: str) -> None:
    async def main() -> None:
        async with listen(addr, echo) as listener:
            scheme = parse_address(addr)[0]
            assert parse_address(listener.listen_address)[0] == scheme
            async with await connect(listener.contact_address, timeout=5) as comm:
                assert comm.peer_address == listener.contact_address
                assert comm.local_address.startswith(f"{scheme}://")
                arr = np.arange(50_000, dtype="f8")
                msg = {"op": "echo", "key": ("x-abc", 0, 1), "data": dumps(arr), 5: None}
                nbytes = await comm.write(msg)
                assert nbytes >= (arr.nbytes if scheme == "tcp" else 0)
                back = await comm.read()
                assert isinstance(back, dict)
                assert back["op"] == "echo" and back["key"] == ("x-abc", 0, 1) and 5 in back
                assert isinstance(back["data"], Serialized)
                np.testing.assert_array_equal(loads(back["data"]), arr)

    run(main())


@pytest.mark.parametrize("addr", ADDRESSES)
def test_messages_arrive_in_order(addr: str) -> None:
    async def main() -> None:
        async with listen(addr, echo) as listener, await connect(listener.contact_address) as comm:
            for i in range(500):
                await comm.write({"i": i})
            for i in range(500):
                assert await comm.read() == {"i": i}

    run(main())


@pytest.mark.parametrize("addr", ADDRESSES)
def test_close_is_seen_by_peer(addr: str) -> None:
    async def main() -> None:
        seen: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

        async def handler(comm: Comm) -> None:
            assert await comm.read() == "last words"
            try:
                await comm.read()
            except CommClosedError as e:
                seen.set_result(e)
                assert comm.closed()
                with pytest.raises(CommClosedError):
                    await comm.write("too late")

        async with listen(addr, handler) as listener:
            comm = await connect(listener.contact_address)
            await comm.write("last words")
            await comm.close()
            assert comm.closed()
            assert isinstance(await seen, CommClosedError)
            with pytest.raises(CommClosedError):
                await comm.write("after close")
            with pytest.raises(CommClosedError):
                await comm.read()

    run(main())


@pytest.mark.parametrize("addr", ADDRESSES)
def test_abort_wakes_a_blocked_reader(addr: str) -> None:
    async def main() -> None:
        async with listen(addr, echo) as listener:
            comm = await connect(listener.contact_address)
            reader = asyncio.ensure_future(comm.read())
            await asyncio.sleep(0)  # let the reader block
            comm.abort()
            with pytest.raises(CommClosedError):
                await reader

    run(main())


@pytest.mark.parametrize("addr", ADDRESSES)
def test_handler_error_is_logged_and_listener_survives(
    addr: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(comm: Comm) -> None:
        msg = await comm.read()
        if msg == "crash":
            raise RuntimeError("handler blew up")
        await comm.write(msg)

    async def main() -> None:
        async with listen(addr, handler) as listener:
            async with await connect(listener.contact_address) as comm:
                await comm.write("crash")
                with pytest.raises(CommClosedError):
                    await comm.read()  # the failing handler's comm is closed
            async with await connect(listener.contact_address) as comm:
                await comm.write("fine")
                assert await comm.read() == "fine"

    with caplog.at_level(logging.DEBUG, logger="conveyor.comm"):
        run(main())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "handler blew up" in errors[0].getMessage()
    assert errors[0].exc_info is None  # one line; the traceback goes to DEBUG


def closed_tcp_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("kind", ["tcp", "inproc"])
def test_connect_to_nothing_fails_within_timeout(kind: str) -> None:
    addr = closed_tcp_port() if kind == "tcp" else "inproc://nobody/1"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(OSError, match="Timed out trying to connect to") as info:
            await connect(addr, timeout=0.5)
        elapsed = loop.time() - start
        assert 0.4 < elapsed < 2.0
        assert isinstance(info.value, asyncio.TimeoutError)

    run(main())


@pytest.mark.parametrize("kind", ["tcp", "inproc"])
def test_a_refused_connection_fails_at_once_without_retries(kind: str) -> None:
    addr = closed_tcp_port() if kind == "tcp" else "inproc://nobody/1"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(ConnectionRefusedError):
            await connect(addr, timeout=30, retry_refused=False)
        assert loop.time() - start < 5  # not the 30 s of retries

    run(main())


class RefusingBackend(Backend):
    """Refuses the first ``refusals`` attempts, then connects over inproc."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.attempts = 0

    async def connect(self, loc: str, **kwargs: Any) -> Comm:
        self.attempts += 1
        if self.attempts <= self.refusals:
            raise ConnectionRefusedError("not yet")
        return await connect(f"inproc://{loc}", handshake=False)

    def listen(self, loc: str, handler: Handler, **kwargs: Any) -> Listener:
        raise NotImplementedError


def test_connect_retries_refused_attempts() -> None:
    backend = RefusingBackend(refusals=3)
    register_backend("refusing", backend)

    async def main() -> None:
        async with listen("inproc://", echo) as listener:
            loc = parse_address(listener.listen_address)[1]
            async with await connect(f"refusing://{loc}", timeout=10) as comm:
                await comm.write("hi")
                assert await comm.read() == "hi"
        assert backend.attempts == 4

    run(main())


@pytest.mark.parametrize("addr", ADDRESSES)
def test_handshake_exchanges_roles_and_extra(addr: str) -> None:
    async def main() -> None:
        server_side: asyncio.Future[dict[str, object]] = asyncio.Future()

        async def handler(comm: Comm) -> None:
            server_side.set_result(comm.peer_info)
            await echo(comm)

        async with (
            listen(addr, handler, role="scheduler", handshake_extra={"version": "0.1"}) as listener,
            await connect(listener.contact_address, role="worker") as comm,
        ):
            assert comm.peer_info["role"] == "scheduler"
            assert comm.peer_info["version"] == "0.1"
            assert (await server_side)["role"] == "worker"

    run(main())


@pytest.mark.parametrize("addr", ADDRESSES)
def test_protocol_mismatch_closes_connection(addr: str, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with listen(addr, echo) as listener:
            comm = await connect(listener.contact_address, handshake=False)
            await comm.write({"op": "handshake", "protocol": 999, "role": "future"})
            theirs = await comm.read()
            assert isinstance(theirs, dict) and theirs["protocol"] == 1
            with pytest.raises(CommClosedError):
                await comm.read()
            await comm.close()

    with caplog.at_level(logging.WARNING, logger="conveyor.comm"):
        run(main())
    [record] = caplog.records
    assert "protocol 999" in record.getMessage()


@pytest.mark.parametrize("addr", ADDRESSES)
def test_connect_rejects_a_peer_that_does_not_handshake(addr: str) -> None:
    async def not_conveyor(comm: Comm) -> None:
        await comm.write({"op": "hello"})
        await comm.read()

    async def main() -> None:
        async with listen(addr, not_conveyor, handshake=False) as listener:
            with pytest.raises(HandshakeError, match="Expected a handshake"):
                await connect(listener.contact_address)

    run(main())


def test_handshake_extra_may_not_override_reserved_keys() -> None:
    async def main() -> None:
        async with listen("inproc://", echo) as listener:
            with pytest.raises(ValueError, match="protocol"):
                await connect(listener.contact_address, handshake_extra={"protocol": 2})

    run(main())


def test_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="Unknown address scheme 'carrier'"):
        listen("carrier://pigeon", echo)
