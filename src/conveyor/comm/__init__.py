"""Transports behind one small interface: tcp, tls and inproc, addressing, handshake and
TLS settings (:class:`Security`)."""

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
from conveyor.comm.security import Security
from conveyor.comm.tls import TLSRefusedError

__all__ = [
    "PROTOCOL_VERSION",
    "Backend",
    "Comm",
    "CommClosedError",
    "HandshakeError",
    "Listener",
    "Security",
    "TLSRefusedError",
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
