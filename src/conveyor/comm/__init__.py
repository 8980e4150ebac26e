"""Transports behind one small interface: tcp and inproc, addressing and handshake."""

from conveyor.comm.addressing import (
    get_address_host,
    get_ip_interface,
    normalize_address,
    parse_address,
    parse_host_port,
    resolve_address,
    unparse_address,
    unparse_host_port,
)
from conveyor.comm.core import Backend, Comm, CommClosedError, Listener
from conveyor.comm.handshake import PROTOCOL_VERSION, HandshakeError, handshake
from conveyor.comm.registry import connect, listen, register_backend

__all__ = [
    "PROTOCOL_VERSION",
    "Backend",
    "Comm",
    "CommClosedError",
    "HandshakeError",
    "Listener",
    "connect",
    "get_address_host",
    "get_ip_interface",
    "handshake",
    "listen",
    "normalize_address",
    "parse_address",
    "parse_host_port",
    "register_backend",
    "resolve_address",
    "unparse_address",
    "unparse_host_port",
]
