"""Where a server listens: the address from the usual host/port/interface/protocol
options, and what to tell the operator of a scheduler open to every interface."""

from __future__ import annotations

from conveyor.comm import get_address_host, get_ip_interface, unparse_host_port

__all__ = ["exposure_warning", "listen_address"]


def listen_address(protocol: str, host: str | None, port: int | None, interface: str | None) -> str:
    """The address to listen on from the usual host/port/interface/protocol options."""
    if protocol == "inproc":
        return "inproc://"
    if interface:
        if host:
            raise ValueError("pass either host or interface, not both")
        host = get_ip_interface(interface)
    return f"{protocol}://{unparse_host_port(host or '0.0.0.0', port or 0)}"


def exposure_warning(listen_at: str) -> str | None:
    """What to tell the operator of a scheduler listening at ``listen_at``: on every
    interface without TLS, anyone on the network can run code on its workers."""
    if not listen_at.startswith("tcp://") or get_address_host(listen_at) not in _WILDCARDS:
        return None
    return (
        "Listening on every interface without TLS: anyone who can reach this port can "
        "submit tasks, which run any code on the workers (give a host to listen on, "
        "such as --host 127.0.0.1, or use TLS)"
    )


_WILDCARDS = frozenset({"0.0.0.0", "::", ""})
