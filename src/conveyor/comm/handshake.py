"""The opening exchange on every connection: protocol version and role.

Both ends send ``{"op": "handshake", "protocol": PROTOCOL_VERSION, "role": ..., **extra}``
and read the peer's: the connecting side writes first, the listening side answers once
it has read and accepted the peer's. Only then does it lift the limits a stranger's
frames are held to (:meth:`Comm.handshake_done`), so a peer that sends a large message
as soon as it has the answer is never taken for a stranger. A peer speaking another
protocol version, sending anything else, or staying silent past the timeout gets its
connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib

from conveyor.comm.core import Comm, CommClosedError

__all__ = ["PROTOCOL_VERSION", "HandshakeError", "handshake"]

PROTOCOL_VERSION = 1
_RESERVED_KEYS = frozenset({"op", "protocol", "role"})


class HandshakeError(CommClosedError):
    """The peer's handshake was missing, late, malformed or incompatible."""


def _check_peer(msg: object, peer: str) -> dict[str, object]:
    if not isinstance(msg, dict) or msg.get("op") != "handshake":
        raise HandshakeError(f"Expected a handshake from {peer}, got {str(msg)[:100]!r}")
    if not all(isinstance(k, str) for k in msg):
        raise HandshakeError(f"Malformed handshake from {peer}: non-string keys")
    protocol = msg.get("protocol")
    if protocol != PROTOCOL_VERSION:
        raise HandshakeError(
            f"Peer {peer} speaks conveyor protocol {protocol!r}, "
            f"this side speaks {PROTOCOL_VERSION}"
        )
    return msg


async def handshake(
    comm: Comm,
    role: str,
    timeout: float,
    extra: dict[str, object] | None = None,
    server_side: bool = False,
) -> dict[str, object]:
    """Exchange handshakes on ``comm`` and return the peer's (also set as ``peer_info``).
    ``server_side``: the listening end (reads first, then answers).

    On any failure the comm is closed and :class:`CommClosedError` (a
    :class:`HandshakeError` for a bad, incompatible or late peer) is raised.
    """
    extra = extra or {}
    if clash := _RESERVED_KEYS.intersection(extra):
        raise ValueError(f"Handshake extra may not set {sorted(clash)}")
    mine = {"op": "handshake", "protocol": PROTOCOL_VERSION, "role": role, **extra}
    peer = comm.peer_address
    try:
        async with asyncio.timeout(timeout):
            if not server_side:
                await comm.write(mine)
            msg = await comm.read()
            try:
                info = _check_peer(msg, peer)
            except HandshakeError:
                if server_side:  # ours still, so that the peer can say what differs
                    with contextlib.suppress(CommClosedError, OSError):
                        await comm.write(mine)
                await comm.close()
                raise
            if server_side:
                comm.handshake_done()  # before the answer: the peer may send at once
                await comm.write(mine)
    except TimeoutError:
        comm.abort()
        raise HandshakeError(f"No handshake from {peer} within {timeout} s") from None
    except HandshakeError:
        raise
    except BaseException:
        comm.abort()
        raise
    comm.peer_info = info
    return info
