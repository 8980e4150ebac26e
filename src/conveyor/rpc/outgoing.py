"""The bound on what a server holds for a peer that does not read.

A :class:`~conveyor.rpc.Peer` writes one batch at a time and queues what is sent
meanwhile; while the transport takes the batch in flight, that queue empties at the next
loop turn. A peer that stops reading its socket stalls the write in flight, and for a
push stream whose sender must not wait (the scheduler's streams to its clients and
workers) the queue would then grow for as long as the peer lives: every completion, with
its inline result, held for a client that never takes it. Such a peer is given a bound
(``conveyor.comm.max-outgoing-buffer``, read by :func:`outgoing_limit`): once what waits
for it passes the bound, it is dropped with one log line, and its loss is handled like
any lost peer.

What waits is measured with :func:`message_nbytes`, and only while the comm says its
writes wait for the peer to read (:meth:`~conveyor.comm.Comm.write_paused`: a TCP
transport over its high-water mark): a peer that keeps up costs nothing. An inproc comm
hands messages straight to the other end and is never paused.
"""

from __future__ import annotations

from conveyor import config
from conveyor.protocol import Serialized

__all__ = ["message_nbytes", "outgoing_limit"]

#: bytes counted for a number, a flag, a None or an object of unknown type
_SCALAR = 9
#: containers nested deeper than this are counted as one scalar each (messages are flat)
_MAX_DEPTH = 16


def outgoing_limit() -> int | None:
    """``conveyor.comm.max-outgoing-buffer`` in bytes (None: no bound); a value that is
    not a size raises ``ValueError`` naming the key."""
    value = config.get("comm.max-outgoing-buffer", None)
    try:
        return config.parse_size(value)
    except ValueError as e:
        raise ValueError(f"conveyor.comm.max-outgoing-buffer: {e}") from None


def message_nbytes(obj: object, depth: int = 0) -> int:
    """About how many bytes ``obj`` (a message, or a value in one) takes on the wire.

    Payloads count in full (bytes, strings, buffers, :class:`Serialized` values with
    their out-of-band buffers), each container item a few bytes more; nothing is copied
    or encoded.
    """
    if isinstance(obj, (bytes, str, bytearray)):
        return len(obj) + 5
    if depth >= _MAX_DEPTH:
        return _SCALAR
    if isinstance(obj, dict):
        depth += 1
        return 5 + sum(message_nbytes(k, depth) + message_nbytes(v, depth) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        depth += 1
        return 5 + sum(message_nbytes(v, depth) for v in obj)
    if isinstance(obj, Serialized):
        return obj.nbytes + 16
    if isinstance(obj, memoryview):
        return obj.nbytes + 5
    return _SCALAR
