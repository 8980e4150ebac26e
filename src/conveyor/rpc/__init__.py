"""Machinery shared by the servers and the client: peers that batch messages and make
requests over one connection, the background event-loop thread, data packing for
transfers, garbage-collector pauses and scheduler files.

It sits between ``comm`` (transports) and ``server``/``client``: both use it, and it
imports neither.
"""

from conveyor.rpc.peer import (
    EventFailed,
    Handler,
    Msg,
    Peer,
    PeerPool,
    ProtocolViolation,
    RemoteError,
    serve_peer,
)
from conveyor.rpc.schedfile import read_scheduler_file, write_scheduler_file

__all__ = [
    "EventFailed",
    "Handler",
    "Msg",
    "Peer",
    "PeerPool",
    "ProtocolViolation",
    "RemoteError",
    "read_scheduler_file",
    "serve_peer",
    "write_scheduler_file",
]
