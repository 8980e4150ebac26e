"""Machinery every server shares: batched streams, requests over one connection, dispatch.

A connection carries batches: each wire message is a list of op-maps. Messages sent
while handling one batch are coalesced and flushed when the event loop next turns
(``loop.call_soon``): an idle system answers at once, a busy one batches by itself.
One batch is written at a time; a peer given ``max_backlog`` is dropped once more than
that waits behind a write it does not take (:mod:`conveyor.rpc.outgoing`).
A map with a ``"reply"`` id is a request; the answer comes back on the same
connection as ``{"op": "reply", "id": ..., "result": ...}`` or ``..."error": text}``.

A request whose handler raises is answered with the error: the caller's mistake. A
stream message whose handler raises (it may have left work half-done), or any message
whose handler raises :class:`ProtocolViolation`, closes that connection with one log line
naming the peer, the op and the error; every other connection goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from conveyor.comm import Comm, CommClosedError, connect
from conveyor.protocol.framing import format_bytes
from conveyor.rpc.outgoing import message_nbytes

logger = logging.getLogger("conveyor.server")

#: How long :meth:`Peer.close` waits for the peer to take what is queued for it.
CLOSE_TIMEOUT = 5.0

Msg = dict[str, Any]
#: A handler gets the peer and the message; it may return a value or an awaitable.
Handler = Callable[["Peer", Msg], Any]


class RemoteError(Exception):
    """A request failed on the other side; the message says how."""


class ProtocolViolation(Exception):
    """The peer sent something it may not: the connection is closed with one log line."""


class Answer:
    """A handler's result that wants to know when its reply is written: ``on_written``
    is called once the reply has been handed to the connection (or cannot be: it
    closed). A server counts work that holds memory until then (``get-data``)."""

    __slots__ = ("on_written", "value")

    def __init__(self, value: Any, on_written: Callable[[], None]) -> None:
        self.value = value
        self.on_written = on_written


class EventFailed(ProtocolViolation):
    """A state machine raised on an event a peer's message caused. Its partial output
    was dropped, but what it changed before failing stays changed: the connection is
    closed, so that the peer's loss cleans up after it as after any lost peer."""


class Peer:
    """One connection: a coalescing outgoing stream plus request/reply bookkeeping."""

    def __init__(self, comm: Comm, loop: asyncio.AbstractEventLoop) -> None:
        self.comm = comm
        self.loop = loop
        self.address = comm.peer_address
        #: "worker" / "client" / ... once the peer has registered
        self.role = ""
        #: the worker address or client id the peer registered as
        self.ident = ""
        self._buffer: list[Msg] = []
        #: called once the messages now in ``_buffer`` are written (or dropped)
        self._on_written: list[Callable[[], None]] = []
        self._flush_scheduled = False
        self._writing = False
        self._write_task: asyncio.Task[None] | None = None
        self._max_backlog: int | None = None
        self._stalled = False  # the write in flight waits for the peer (with a bound)
        #: bytes found waiting behind a stalled write (measured only then, with a bound)
        self.queued_bytes = 0
        self._measured = 0  # messages at the head of _buffer counted in queued_bytes
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self.closed = False
        #: told of a stream message that could not be encoded (it was not sent)
        self.on_unsendable: Callable[[Msg, Exception], None] | None = None
        self.messages_sent = 0
        self.batches_sent = 0

    def __repr__(self) -> str:
        return f"<Peer {self.role or '?'} {self.ident or self.address}>"

    @property
    def max_backlog(self) -> int | None:
        """Drop the peer once more than this many bytes wait behind a write it does not
        take (None: never); for push streams whose sender must not wait (see
        :mod:`conveyor.rpc.outgoing`)."""
        return self._max_backlog

    @max_backlog.setter
    def max_backlog(self, limit: int | None) -> None:
        self._max_backlog = limit
        self.comm.watch_writes(None if limit is None else self._write_paused)
        self._stalled = False

    def _write_paused(self, paused: bool) -> None:
        """The comm's writes wait for the peer (``paused``), or no longer do."""
        self._stalled = paused
        if not self._writing:
            return
        if not paused:
            self._flush_scheduled = True  # the write's end flushes what waits
        elif self._buffer:  # count what waits now, and at each turn that adds to it
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        else:
            self._flush_scheduled = False  # the next send has it counted

    # ------------------------------------------------------------- sending

    def send(self, msg: Msg, on_written: Callable[[], None] | None = None) -> None:
        """Queue ``msg``; it leaves with everything else queued this loop turn.
        ``on_written`` is called once it has been written, or dropped."""
        if self.closed:
            if on_written is not None:
                on_written()
            return
        self._buffer.append(msg)
        if on_written is not None:
            self._on_written.append(on_written)
        # True while a flush is scheduled, and while a write is in flight (its end
        # flushes) unless that write waits for a peer with a bound (_write_paused)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._writing:
            if self._stalled:  # count what waits at each turn that adds to it
                self._flush_scheduled = False
                if self._max_backlog is not None and not self.closed:
                    self._check_backlog(self._max_backlog)
            return
        self._flush_scheduled = False
        if self.closed or not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        written, self._on_written = self._on_written, []
        if self._measured:
            self._measured = self.queued_bytes = 0
        self._writing = self._flush_scheduled = True  # its end flushes what comes meanwhile
        self._write_task = self.loop.create_task(self._write(batch, written))

    def _check_backlog(self, limit: int) -> None:
        """Messages wait behind a write that waits for the peer to read: count them,
        and drop the peer once they are over ``limit`` bytes."""
        buffer, total = self._buffer, self.queued_bytes
        for i in range(self._measured, len(buffer)):
            total += message_nbytes(buffer[i])
        self._measured, self.queued_bytes = len(buffer), total
        if total > limit:
            logger.warning(
                "Dropping %r: %s wait for it and it is not reading "
                "(over conveyor.comm.max-outgoing-buffer, %s)",
                self,
                format_bytes(total),
                format_bytes(limit),
            )
            self.abort()

    async def _write(self, batch: list[Msg], written: list[Callable[[], None]]) -> None:
        try:
            await self.comm.write(batch)
            self.messages_sent += len(batch)
            self.batches_sent += 1
        except (CommClosedError, OSError) as e:
            logger.debug("Sending to %r failed: %s", self, e)
            self.abort()
        except (TypeError, ValueError):
            # Nothing was written: a message could not be encoded (or is over the frame
            # size limit). Send the batch one message at a time and fail only those.
            await self._write_singly(batch)
        except Exception:
            logger.exception("Could not send a batch of %d messages to %r", len(batch), self)
            self.abort()
        finally:
            self._writing = self._flush_scheduled = False
            for callback in written:
                callback()
            if self._buffer and not self.closed:
                self._flush()

    async def _write_singly(self, batch: list[Msg]) -> None:
        for msg in batch:
            try:
                await self.comm.write([msg])
            except (TypeError, ValueError) as e:
                self._unsendable(msg, e)
            except (CommClosedError, OSError) as e:
                logger.debug("Sending to %r failed: %s", self, e)
                self.abort()
                return

    def _unsendable(self, msg: Msg, error: Exception) -> None:
        """``msg`` cannot travel: fail the request it makes, answer the request it
        answers with the error, or tell ``on_unsendable``; the connection stays open."""
        op = msg.get("op")
        text = f"cannot send {op!r} to {self.address}: {error}"
        rid = msg.get("reply")
        if op == "reply":
            self.send({"op": "reply", "id": msg.get("id"), "error": f"TypeError: {text}"})
        elif rid is not None and rid in self._pending:
            fut = self._pending[rid]
            if not fut.done():
                fut.set_exception(TypeError(text))
        elif self.on_unsendable is not None:
            self.on_unsendable(msg, TypeError(text))
        else:
            logger.error("Dropped a message to %r: %s", self, text)

    async def request(self, msg: Msg, timeout: float | None = None) -> Any:
        """Send a request and wait for its reply; raise RemoteError if it failed there.

        With ``timeout``, a peer that has not answered within that many seconds is
        taken for stuck: the connection is aborted (a late reply must not arrive on a
        connection reused for something else) and ``TimeoutError`` raised.
        """
        if self.closed:
            raise CommClosedError(f"connection to {self.address} is closed")
        rid = next(self._ids)
        fut: asyncio.Future[Any] = self.loop.create_future()
        self._pending[rid] = fut
        msg["reply"] = rid
        self.send(msg)
        try:
            if timeout is None:
                return await fut
            try:
                return await asyncio.wait_for(fut, timeout)
            except TimeoutError:  # a remote failure arrives as RemoteError: this is ours
                logger.warning(
                    "No reply to %r from %s within %.1f s: closing the connection",
                    msg.get("op"),
                    self.address,
                    timeout,
                )
                self.abort()
                raise TimeoutError(
                    f"{self.address} did not answer {msg.get('op')!r} within {timeout:.1f} s"
                ) from None
        finally:
            self._pending.pop(rid, None)

    def _resolve(self, msg: Msg) -> None:
        fut = self._pending.get(msg.get("id", -1))
        if fut is None or fut.done():
            return
        if "error" in msg:
            fut.set_exception(RemoteError(str(msg["error"])))
        else:
            fut.set_result(msg.get("result"))

    # ------------------------------------------------------------- closing

    def abort(self) -> None:
        """Close at once; pending requests fail with CommClosedError."""
        if self.closed:
            return
        self.closed = True
        self._buffer = []
        written, self._on_written = self._on_written, []
        for callback in written:
            callback()
        self.comm.abort()
        self._fail_pending()

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Send what is queued (after the write in flight, if any), then close; a peer
        that has not taken it all within ``timeout`` seconds is aborted instead."""
        if self.closed:
            return
        try:
            async with asyncio.timeout(timeout):
                while not self.closed and (self._writing or self._buffer):
                    if self._write_task is not None and self._writing:
                        await asyncio.shield(self._write_task)
                    else:
                        self._flush()
        except TimeoutError:
            logger.warning(
                "Aborting %r: it did not take what was queued within %.1f s", self, timeout
            )
            self.abort()
            return
        if self.closed:  # the flush failed, and aborted the connection
            return
        self.closed = True
        with contextlib.suppress(CommClosedError, OSError):
            await self.comm.close()
        self._fail_pending()

    def _fail_pending(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CommClosedError(f"connection to {self.address} closed"))
        self._pending.clear()


async def serve_peer(
    peer: Peer,
    handlers: dict[str, Handler],
    on_batch_done: Callable[[], None] | None = None,
) -> None:
    """Read batches from ``peer`` and dispatch each op until the connection closes."""
    comm = peer.comm
    while not peer.closed:
        try:
            batch = await comm.read()
        except (CommClosedError, OSError):
            break
        if isinstance(batch, dict):
            batch = (batch,)
        if not isinstance(batch, (list, tuple)):
            logger.warning("Closing %r: expected a batch of messages, got %s", peer, type(batch))
            break
        for msg in batch:
            if not isinstance(msg, dict):
                logger.warning("Closing %r: malformed message of type %s", peer, type(msg))
                peer.abort()
                return
            op = msg.get("op")
            if op == "reply":
                peer._resolve(msg)
                continue
            handler = handlers.get(op)  # type: ignore[arg-type]
            rid = msg.get("reply")
            if handler is None:
                text = f"unknown operation {op!r}"
                if rid is not None:
                    peer.send({"op": "reply", "id": rid, "error": text})
                else:
                    logger.warning("Message from %r: %s", peer, text)
                continue
            _dispatch(peer, handler, msg, rid)
            if peer.closed:  # the message closed the connection: the rest goes unread
                break
        if on_batch_done is not None:
            on_batch_done()
    peer.abort()


def _dispatch(peer: Peer, handler: Handler, msg: Msg, rid: Any) -> None:
    try:
        result = handler(peer, msg)
    except Exception as e:
        _failed(peer, msg, rid, e)
        return
    if isinstance(result, Awaitable):
        peer.loop.create_task(_finish(peer, msg, rid, result))
    else:
        _reply(peer, rid, result)


def _reply(peer: Peer, rid: Any, result: Any) -> None:
    if type(result) is Answer:
        if rid is None:
            result.on_written()
        else:
            peer.send({"op": "reply", "id": rid, "result": result.value}, result.on_written)
    elif rid is not None:
        peer.send({"op": "reply", "id": rid, "result": result})


async def _finish(peer: Peer, msg: Msg, rid: Any, result: Awaitable[Any]) -> None:
    try:
        value = await result
    except asyncio.CancelledError:
        raise
    except Exception as e:
        _failed(peer, msg, rid, e)
        return
    _reply(peer, rid, value)


def _failed(peer: Peer, msg: Msg, rid: Any, e: Exception) -> None:
    """The handler of ``msg`` raised ``e``: reply with the error to a request, close the
    connection after a protocol violation or a failed stream message."""
    op = msg.get("op")
    text = f"{type(e).__name__}: {e}"
    debug = logger.isEnabledFor(logging.DEBUG)  # one line; the traceback when debugging
    if isinstance(e, ProtocolViolation):
        level = logging.ERROR if isinstance(e, EventFailed) else logging.WARNING
        logger.log(level, "Closing %r after %r: %s", peer, op, e, exc_info=debug)
        peer.abort()
    elif rid is None:
        logger.error("Closing %r after %r failed: %s", peer, op, text, exc_info=debug)
        peer.abort()
    else:
        peer.send({"op": "reply", "id": rid, "error": text})
        logger.debug("Request %r from %r failed: %s", op, peer, text, exc_info=True)


class PeerPool:
    """Shared outgoing connections, one per address, opened on first use. With
    ``retry_refused=False`` a refused connection fails at once (see ``connect``)."""

    def __init__(
        self,
        role: str,
        handlers: dict[str, Handler],
        timeout: float,
        *,
        retry_refused: bool = True,
        connection_args: Mapping[str, Any] | None = None,
    ) -> None:
        self.role = role
        self.handlers = handlers
        self.timeout = timeout
        self.retry_refused = retry_refused
        #: transport options for every connection (``Security.get_connection_args``)
        self.connection_args = dict(connection_args or {})
        self._peers: dict[str, Peer] = {}
        self._connecting: dict[str, asyncio.Future[Peer]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, address: str) -> Peer:
        """The open connection to ``address``, connecting if there is none."""
        peer = self._peers.get(address)
        if peer is not None and not peer.closed:
            return peer
        pending = self._connecting.get(address)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Peer] = loop.create_future()
        self._connecting[address] = fut
        try:
            comm = await connect(
                address,
                self.timeout,
                role=self.role,
                retry_refused=self.retry_refused,
                **self.connection_args,
            )
            peer = Peer(comm, loop)
            self._peers[address] = peer
            task = loop.create_task(serve_peer(peer, self.handlers))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            fut.set_result(peer)
            return peer
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()
            raise
        finally:
            del self._connecting[address]

    def drop(self, address: str) -> None:
        """Forget (and abort) the connection to ``address``."""
        peer = self._peers.pop(address, None)
        if peer is not None:
            peer.abort()

    async def close(self) -> None:
        """Close every connection."""
        peers, self._peers = list(self._peers.values()), {}
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
