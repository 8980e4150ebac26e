"""TCP transport: framed messages over asyncio's zero-copy ``BufferedProtocol``.

Received bytes go through a :class:`~conveyor.protocol.FrameDecoder`, which lets the
socket write large frames straight into their final buffers. Complete messages wait in a
queue until :meth:`TCPComm.read` decodes them; when too many bytes are queued, reading
from the socket pauses so a fast sender cannot exhaust memory. Writes respect the
transport's flow control: :meth:`TCPComm.write` waits while the transport is paused.
A peer that sends bad bytes is disconnected with one warning in the log.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from conveyor import config
from conveyor.comm.addressing import (
    get_ip,
    parse_address,
    parse_host_port,
    unparse_address,
    unparse_host_port,
)
from conveyor.comm.core import (
    DEFAULT_MAX_FRAME_SIZE,
    Backend,
    Comm,
    CommClosedError,
    Handler,
    Listener,
)
from conveyor.comm.prefault import receive_buffer, receive_progress
from conveyor.protocol import FrameDecoder, ProtocolError, decode, encode
from conveyor.protocol.framing import format_bytes, frame_lengths, pack_header

__all__ = ["TCPBackend", "TCPComm", "TCPListener", "open_comm"]

logger = logging.getLogger("conveyor.comm")

#: what a listener accepts from a peer before the conveyor handshake succeeds: a frame of
#: at most this many bytes, at most this many frames a message (a handshake is a few
#: hundred bytes in one frame)
STRANGER_FRAME_SIZE = 64 * 1024
STRANGER_FRAMES = 4

#: Pause reading from the socket when this many received bytes wait to be read ...
_READ_HIGH_WATER = 64 * 1024 * 1024
#: ... and resume once the reader has brought them down to this.
_READ_LOW_WATER = 16 * 1024 * 1024
#: Frames at least this big are handed to the transport on their own, never joined ...
_LARGE_WRITE = 64 * 1024
#: ... and in chunks of this size when the transport would copy them (Python < 3.12).
_WRITE_CHUNK = 1024 * 1024
#: How long a graceful close may take to flush before the connection is aborted.
_CLOSE_TIMEOUT = 5.0
_ANY_HOSTS = frozenset({"", "0.0.0.0", "::"})


@dataclass(frozen=True, slots=True)
class _Limits:
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_frames: int = 1_000_000
    max_message_size: int | None = None

    @classmethod
    def from_config(cls, **overrides: Any) -> _Limits:
        """Limits from ``conveyor.comm`` config, with keyword arguments taking precedence."""
        unknown = set(overrides) - {"max_frame_size", "max_frames", "max_message_size"}
        if unknown:
            raise TypeError(f"Unknown tcp comm options: {sorted(unknown)}")
        frame = config.parse_size(config.get("comm.max-frame-size", None))
        message = config.parse_size(config.get("comm.max-message-size", None))
        values: dict[str, Any] = {
            "max_frame_size": frame if frame is not None else DEFAULT_MAX_FRAME_SIZE,
            "max_message_size": message,
        }
        values.update(overrides)
        return cls(**values)

    def decoder(self) -> FrameDecoder:
        return FrameDecoder(
            self.max_frame_size,
            self.max_frames,
            self.max_message_size,
            receive_buffer,
            receive_progress,
        )


def _tcp_address(sockaddr: Any, scheme: str = "tcp") -> str:
    if not isinstance(sockaddr, tuple):
        return f"{scheme}://<unknown>"
    return unparse_address(scheme, unparse_host_port(str(sockaddr[0]), int(sockaddr[1])))


def _nbytes(frame: bytes | memoryview) -> int:
    return frame.nbytes if isinstance(frame, memoryview) else len(frame)


def _configure_socket(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:  # not a TCP socket
        pass


class _FrameProtocol(asyncio.BufferedProtocol):
    """Receives framed messages into a queue and exposes flow control to the comm.

    ``scheme`` names the addresses it reports (``"tls"`` under an SSL transport).
    """

    def __init__(
        self,
        decoder: FrameDecoder,
        server_side: bool,
        on_connect: Callable[[_FrameProtocol], None] | None = None,
        scheme: str = "tcp",
    ) -> None:
        self._decoder = decoder
        self._server_side = server_side
        self._on_connect = on_connect
        self._scheme = scheme
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._native_writelines = False
        self.local_address = self.peer_address = f"{scheme}://<unknown>"
        self._messages: deque[tuple[list[memoryview], int]] = deque()
        self._queued_bytes = 0
        self._reading_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._drain_waiters: deque[asyncio.Future[None]] = deque()
        #: told when writing pauses (True) and resumes (False)
        self.on_pause: Callable[[bool], None] | None = None
        self._write_lock = asyncio.Lock()
        self._reason = "closed by peer"
        self._error: BaseException | None = None
        self.is_closed = False
        self.lost: asyncio.Future[None] = self._loop.create_future()

    @property
    def transport(self) -> asyncio.Transport:
        assert self._transport is not None, "not connected"
        return self._transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's do not subclass asyncio.Transport.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        # asyncio's default writelines joins (copies) everything; uvloop and
        # Python >= 3.12 override it with a zero-copy version. Under TLS, where every
        # byte is copied to be encrypted anyway, joining small pieces makes one TLS
        # record of them instead of one each.
        self._native_writelines = (
            type(transport).writelines is not asyncio.WriteTransport.writelines
            and transport.get_extra_info("sslcontext") is None
        )
        _configure_socket(transport)
        self.local_address = _tcp_address(transport.get_extra_info("sockname"), self._scheme)
        self.peer_address = _tcp_address(transport.get_extra_info("peername"), self._scheme)
        if self._on_connect is not None:
            self._on_connect(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        try:
            messages = self._decoder.buffer_updated(nbytes)
        except ProtocolError as e:
            self.fail(e)
            return
        if not messages:
            return
        for frames in messages:
            size = sum(f.nbytes for f in frames)
            self._messages.append((frames, size))
            self._queued_bytes += size
        if self._queued_bytes > _READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        if self._decoder.mid_message:
            self._reason = "closed by peer in the middle of a message"
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_closed = True
        self._decoder.close()  # a frame received in part: its memory goes now
        if exc is not None and self._error is None:
            self._error = exc
            self._reason = f"lost: {exc!r}"
        self._wake_reader()
        self._wake_writers()
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.on_pause is not None:
            self.on_pause(True)

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.on_pause is not None:
            self.on_pause(False)
        self._wake_writers()

    def fail(self, error: ProtocolError) -> None:
        """Abort the connection because the peer sent bad bytes; log it once."""
        if self._error is None:
            self._error = error
            self._reason = str(error)
            direction = "from" if self._server_side else "to"
            logger.warning("Closing connection %s %s: %s", direction, self.peer_address, error)
        if self._transport is not None:
            self._transport.abort()

    def closed_error(self) -> CommClosedError:
        """The error to raise for IO on this closed connection."""
        direction = "from" if self._server_side else "to"
        error = CommClosedError(f"Connection {direction} {self.peer_address} {self._reason}")
        error.__cause__ = self._error
        return error

    async def read_frames(self) -> list[memoryview]:
        """Return the next received message's frames."""
        while not self._messages:
            if self.is_closed:
                raise self.closed_error()
            if self._read_waiter is not None:
                raise RuntimeError(f"Concurrent read() calls on the comm to {self.peer_address}")
            self._read_waiter = self._loop.create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        frames, size = self._messages.popleft()
        self._queued_bytes -= size
        if self._reading_paused and self._queued_bytes <= _READ_LOW_WATER:
            self._reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()
        return frames

    async def write_message(
        self, header: bytes, frames: Sequence[bytes | memoryview], biggest: int
    ) -> None:
        """Send a header and its frames, never interleaved with another message.

        ``biggest`` is the size of the largest frame.
        """
        # uvloop's zero-copy writelines is still slower than feeding large frames in
        # chunks as the socket drains (about 1.7 against 2.2 GB/s for 200 MB here)
        if self._native_writelines and biggest < _LARGE_WRITE:
            self.transport.writelines([header, *frames])
            await self.drain()
            return
        if biggest < _LARGE_WRITE and not self._write_lock.locked():
            self.transport.write(b"".join([header, *frames]))  # one call: cannot interleave
            await self.drain()
            return
        async with self._write_lock:
            small: list[bytes | memoryview] = [header]
            for frame in frames:
                if _nbytes(frame) < _LARGE_WRITE:
                    small.append(frame)
                    continue
                if small:
                    self.transport.write(b"".join(small))
                    small = []
                await self._write_large(frame)
            if small:
                self.transport.write(b"".join(small))
            await self.drain()

    async def _write_large(self, frame: bytes | memoryview) -> None:
        # asyncio's transport copies whatever the socket does not take at once into its
        # buffer; feeding a large frame in chunks as the buffer drains keeps that copy
        # small and lets the kernel read straight from the frame most of the time.
        view = memoryview(frame)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        for start in range(0, view.nbytes, _WRITE_CHUNK):
            await self.drain()
            self.transport.write(view[start : start + _WRITE_CHUNK])

    async def drain(self) -> None:
        """Wait until the transport accepts more data."""
        if self.is_closed:
            raise self.closed_error()
        if not self._writing_paused:
            return
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._drain_waiters:
                self._drain_waiters.remove(waiter)
        if self.is_closed:
            raise self.closed_error()

    def _wake_reader(self) -> None:
        if self._read_waiter is not None and not self._read_waiter.done():
            self._read_waiter.set_result(None)

    def _wake_writers(self) -> None:
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


class TCPComm(Comm):
    """A :class:`Comm` over one TCP connection."""

    def __init__(self, protocol: _FrameProtocol, limits: _Limits) -> None:
        super().__init__()
        self._protocol = protocol
        self._limits = limits
        self._closing = False
        if protocol._server_side:
            # Until the conveyor handshake succeeds the peer is a stranger: a declared
            # frame is allocated (and paged in) when its header arrives, so a stranger
            # may declare only what a handshake needs, not a 1 GiB frame per connection.
            decoder = protocol._decoder
            decoder.max_frame_size = min(decoder.max_frame_size, STRANGER_FRAME_SIZE)
            decoder.max_frames = min(decoder.max_frames, STRANGER_FRAMES)

    def handshake_done(self) -> None:
        decoder = self._protocol._decoder
        decoder.max_frame_size = self._limits.max_frame_size
        decoder.max_frames = self._limits.max_frames

    @property
    def local_address(self) -> str:
        return self._protocol.local_address

    @property
    def peer_address(self) -> str:
        return self._protocol.peer_address

    def closed(self) -> bool:
        return self._closing or self._protocol.is_closed

    def watch_writes(self, on_pause: Callable[[bool], None] | None) -> None:
        self._protocol.on_pause = on_pause

    def _check_open(self) -> None:
        if self._closing:
            raise CommClosedError(f"Comm to {self.peer_address} was closed locally")
        if self._protocol.is_closed:
            raise self._protocol.closed_error()

    async def read(self) -> object:
        self._check_open()
        frames = await self._protocol.read_frames()
        try:
            return decode(frames)
        except ProtocolError as e:
            self._protocol.fail(e)
            raise self._protocol.closed_error() from e

    async def write(self, msg: object) -> int:
        self._check_open()
        limits = self._limits
        frames = encode(msg, limits.max_frame_size)
        lengths = frame_lengths(frames)
        biggest = max(lengths)  # at most max_frame_size: encode shards larger frames
        if limits.max_message_size is not None and sum(lengths) > limits.max_message_size:
            raise ValueError(
                f"Cannot send a message of {format_bytes(sum(lengths))} to "
                f"{self.peer_address}: it exceeds conveyor.comm.max-message-size "
                f"{format_bytes(limits.max_message_size)}"
            )
        header = pack_header(lengths)
        await self._protocol.write_message(header, frames, biggest)
        return len(header) + sum(lengths)

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        transport = self._protocol.transport
        transport.close()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await asyncio.shield(self._protocol.lost)
        except TimeoutError:
            transport.abort()

    def abort(self) -> None:
        self._closing = True
        self._protocol.transport.abort()


class TCPListener(Listener):
    """Accepts TCP connections and runs ``handler`` on each new :class:`TCPComm`."""

    #: the scheme of the addresses it reports
    scheme: ClassVar[str] = "tcp"

    def __init__(self, loc: str, handler: Handler, limits: _Limits) -> None:
        self._host, self._port = parse_host_port(loc, default_port=0)
        self._handler = handler
        self._limits = limits
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        #: connections served at once at most (``conveyor.comm.max-connections``); one
        #: more is closed at once, and the first refusal of a run of them logged
        limit = config.get("comm.max-connections", None)
        self.max_connections: int | None = None if limit is None else int(limit)
        self._refusing = False

    async def start(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._make_protocol,
            host=self._host or None,
            port=self._port,
            reuse_address=True,
            **self._server_options(),
        )

    def _server_options(self) -> dict[str, Any]:
        """Extra keyword arguments for ``loop.create_server`` (TLS adds ``ssl``)."""
        return {}

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def _make_protocol(self) -> _FrameProtocol:
        return _FrameProtocol(
            self._limits.decoder(), server_side=True, on_connect=self._accept, scheme=self.scheme
        )

    def _accept(self, protocol: _FrameProtocol) -> None:
        comm = TCPComm(protocol, self._limits)
        if self.max_connections is not None and len(self._tasks) >= self.max_connections:
            if not self._refusing:
                self._refusing = True
                logger.warning(
                    "%s serves %d connections (conveyor.comm.max-connections): closing "
                    "new ones until one ends",
                    self.listen_address,
                    len(self._tasks),
                )
            comm.abort()
            return
        self._refusing = False
        task = asyncio.ensure_future(self._handler(comm))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def listen_address(self) -> str:
        if self._server is not None and self._server.sockets:
            return _tcp_address(self._server.sockets[0].getsockname(), self.scheme)
        return unparse_address(self.scheme, unparse_host_port(self._host, self._port))

    @property
    def contact_address(self) -> str:
        host, port = parse_host_port(parse_address(self.listen_address)[1])
        if host in _ANY_HOSTS:
            host = get_ip()
        return unparse_address(self.scheme, unparse_host_port(host, port))


async def open_comm(loc: str, limits: _Limits, scheme: str = "tcp", **options: Any) -> TCPComm:
    """Make one connection to ``loc``; ``options`` go to ``loop.create_connection``
    (TLS passes ``ssl`` and its handshake timeout)."""
    host, port = parse_host_port(loc)
    loop = asyncio.get_running_loop()
    decoder = limits.decoder()
    _, protocol = await loop.create_connection(
        lambda: _FrameProtocol(decoder, server_side=False, scheme=scheme), host, port, **options
    )
    return TCPComm(protocol, limits)


class TCPBackend(Backend):
    """The ``tcp://`` transport.

    Keyword arguments: ``max_frame_size``, ``max_frames`` and ``max_message_size``
    bound what a peer may send (see :class:`~conveyor.protocol.FrameDecoder`); the
    first and last default to ``conveyor.comm.max-frame-size`` and
    ``conveyor.comm.max-message-size``. Larger user data is sent in shards of at most
    ``max_frame_size`` (see :mod:`conveyor.protocol.codec`).
    """

    async def connect(self, loc: str, **kwargs: Any) -> TCPComm:
        return await open_comm(loc, _Limits.from_config(**kwargs))

    def listen(self, loc: str, handler: Handler, **kwargs: Any) -> TCPListener:
        return TCPListener(loc, handler, _Limits.from_config(**kwargs))
