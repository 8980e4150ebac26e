"""Address parsing and resolution: ``scheme://location`` strings.

A bare ``host:port`` means ``tcp://host:port``. IPv6 hosts are bracketed when a port
follows: ``tcp://[::1]:8786``.
"""

from __future__ import annotations

import ipaddress
import re
import socket

import psutil

__all__ = [
    "DEFAULT_SCHEME",
    "get_address_host",
    "get_ip",
    "get_ip_interface",
    "normalize_address",
    "parse_address",
    "parse_host_port",
    "resolve_address",
    "unparse_address",
    "unparse_host_port",
]

DEFAULT_SCHEME = "tcp"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*\Z")
_HOST_PORT_SCHEMES = frozenset({"tcp", "tls"})


def parse_address(addr: str, strict: bool = False) -> tuple[str, str]:
    """Split ``"tcp://127.0.0.1:8786"`` into ``("tcp", "127.0.0.1:8786")``.

    Without a scheme the default ``tcp`` is assumed, unless ``strict`` is true.
    """
    if not isinstance(addr, str):
        raise ValueError(f"Expected an address string, got {addr!r}")
    scheme, sep, loc = addr.partition("://")
    if not sep:
        if strict:
            raise ValueError(f"Invalid address {addr!r}: missing scheme such as 'tcp://'")
        return DEFAULT_SCHEME, addr
    if not _SCHEME.match(scheme):
        raise ValueError(f"Invalid address {addr!r}: bad scheme {scheme!r}")
    return scheme.lower(), loc


def unparse_address(scheme: str, loc: str) -> str:
    """Join a scheme and a location into an address string."""
    return f"{scheme}://{loc}"


def normalize_address(addr: str) -> str:
    """Return ``addr`` with an explicit, lower-case scheme."""
    return unparse_address(*parse_address(addr))


def _parse_port(port: str, loc: str) -> int:
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"Invalid port {port!r} in address {loc!r}")
    return int(port)


def parse_host_port(loc: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``"host:port"`` (or ``"[::1]:port"``) into ``(host, port)``.

    A missing port takes ``default_port``; without one it is an error.
    """
    if loc.startswith("["):
        host, bracket, rest = loc[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"Invalid address {loc!r}: bad IPv6 brackets")
        port = rest[1:] if rest else None
    elif loc.count(":") == 1:
        host, _, port = loc.partition(":")
    else:  # a bare hostname, IPv4 address or unbracketed IPv6 address: no port
        host, port = loc, None
    if port is None:
        if default_port is None:
            raise ValueError(f"Invalid address {loc!r}: missing port number")
        return host, default_port
    return host, _parse_port(port, loc)


def unparse_host_port(host: str, port: int | None = None) -> str:
    """Join a host and an optional port, bracketing IPv6 hosts."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


def get_address_host(addr: str) -> str:
    """Return the host part of an address: ``"tcp://10.0.0.1:8786"`` -> ``"10.0.0.1"``."""
    scheme, loc = parse_address(addr)
    if scheme in _HOST_PORT_SCHEMES:
        return parse_host_port(loc, default_port=0)[0]
    return loc.split("/", 1)[0]


def _resolve_host(host: str, port: int, addr: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ValueError(f"Could not resolve host {host!r} in address {addr!r}: {e}") from e
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # prefer IPv4, stable otherwise
    return str(infos[0][4][0])


def resolve_address(addr: str) -> str:
    """Resolve the hostname in ``addr`` to an IP address (IPv4 preferred).

    ``resolve_address("tcp://localhost:8786") == "tcp://127.0.0.1:8786"``.
    """
    scheme, loc = parse_address(addr)
    if scheme not in _HOST_PORT_SCHEMES:
        return unparse_address(scheme, loc)
    host, port = parse_host_port(loc)
    return unparse_address(scheme, unparse_host_port(_resolve_host(host, port, addr), port))


def get_ip(target: str = "8.8.8.8", port: int = 80) -> str:
    """Return this host's IP address used to reach ``target`` (no packet is sent).

    Falls back to ``127.0.0.1`` when there is no route.
    """
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((target, port))
        except OSError:
            return "127.0.0.1"
        return str(sock.getsockname()[0])


def get_ip_interface(ifname: str) -> str:
    """Return the IPv4 address of network interface ``ifname`` (e.g. ``"eth0"``)."""
    interfaces = psutil.net_if_addrs()
    if ifname not in interfaces:
        raise ValueError(
            f"{ifname!r} is not a valid network interface. "
            f"Valid network interfaces are: {sorted(interfaces)}"
        )
    for info in interfaces[ifname]:
        if info.family == socket.AF_INET:
            return str(info.address)
    raise ValueError(f"Network interface {ifname!r} has no IPv4 address")
