"""The opening exchange on every connection: protocol version and role.

Both ends write ``{"op": "handshake", "protocol": PROTOCOL_VERSION, "role": ..., **extra}``
and then read the peer's. A peer speaking another protocol version, sending anything
else, or staying silent past the timeout gets its connection closed.
"""

from __future__ import annotations

import asyncio

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
) -> dict[str, object]:
    """Exchange handshakes on ``comm`` and return the peer's (also set as ``peer_info``).

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
            await comm.write(mine)
            msg = await comm.read()
    except TimeoutError:
        comm.abort()
        raise HandshakeError(f"No handshake from {peer} within {timeout} s") from None
    except BaseException:
        comm.abort()
        raise
    try:
        info = _check_peer(msg, peer)
    except HandshakeError:
        await comm.close()
        raise
    comm.peer_info = info
    return info
