"""Address parsing, formatting and resolution."""

from __future__ import annotations

import pytest

from conveyor.comm import (
    get_address_host,
    get_ip_interface,
    normalize_address,
    parse_address,
    parse_host_port,
    resolve_address,
    unparse_address,
    unparse_host_port,
)


def test_parse_address() -> None:
    assert parse_address("tcp://127.0.0.1:8786") == ("tcp", "127.0.0.1:8786")
    assert parse_address("TCP://h:1") == ("tcp", "h:1")
    assert parse_address("127.0.0.1:8786") == ("tcp", "127.0.0.1:8786")
    assert parse_address("inproc://abc/3") == ("inproc", "abc/3")
    assert parse_address("inproc://") == ("inproc", "")


@pytest.mark.parametrize("addr", ["1bad://x:1", "://x:1", "a b://x"])
def test_parse_address_rejects_bad_schemes(addr: str) -> None:
    with pytest.raises(ValueError, match="Invalid address"):
        parse_address(addr)


def test_parse_address_strict_requires_a_scheme() -> None:
    with pytest.raises(ValueError, match="'host:1'"):
        parse_address("host:1", strict=True)


def test_parse_address_rejects_non_strings() -> None:
    with pytest.raises(ValueError):
        parse_address(8786)  # type: ignore[arg-type]


def test_unparse_and_normalize() -> None:
    assert unparse_address("tcp", "h:1") == "tcp://h:1"
    assert normalize_address("h:1") == "tcp://h:1"
    assert normalize_address("TLS://h:1") == "tls://h:1"


@pytest.mark.parametrize(
    "loc, default, expected",
    [
        ("127.0.0.1:8786", None, ("127.0.0.1", 8786)),
        ("host:0", None, ("host", 0)),
        ("[::1]:80", None, ("::1", 80)),
        ("[::1]", 9, ("::1", 9)),
        ("::1", 9, ("::1", 9)),
        ("localhost", 7, ("localhost", 7)),
        (":8786", None, ("", 8786)),
    ],
)
def test_parse_host_port(loc: str, default: int | None, expected: tuple[str, int]) -> None:
    assert parse_host_port(loc, default) == expected


@pytest.mark.parametrize("loc", ["localhost", "h:port", "h:70000", "[::1:80", "[::1]x", "h:-1"])
def test_parse_host_port_errors_name_the_address(loc: str) -> None:
    with pytest.raises(ValueError, match="address"):
        parse_host_port(loc)


def test_unparse_host_port() -> None:
    assert unparse_host_port("127.0.0.1", 80) == "127.0.0.1:80"
    assert unparse_host_port("::1", 80) == "[::1]:80"
    assert unparse_host_port("[::1]", 80) == "[::1]:80"
    assert unparse_host_port("h") == "h"


def test_get_address_host() -> None:
    assert get_address_host("tcp://10.0.0.1:8786") == "10.0.0.1"
    assert get_address_host("tcp://[::1]:8786") == "::1"
    assert get_address_host("10.0.0.2:1") == "10.0.0.2"
    assert get_address_host("inproc://abc/3") == "abc"


def test_resolve_address() -> None:
    assert resolve_address("tcp://localhost:8786") == "tcp://127.0.0.1:8786"
    assert resolve_address("localhost:1") == "tcp://127.0.0.1:1"
    assert resolve_address("tcp://10.1.2.3:5") == "tcp://10.1.2.3:5"
    assert resolve_address("tcp://[::1]:5") == "tcp://[::1]:5"
    assert resolve_address("inproc://abc/1") == "inproc://abc/1"


def test_resolve_address_unknown_host() -> None:
    with pytest.raises(ValueError, match=r"no-such-host\.invalid"):
        resolve_address("tcp://no-such-host.invalid:1")


def test_get_ip_interface() -> None:
    assert get_ip_interface("lo") == "127.0.0.1"
    with pytest.raises(ValueError, match=r"Valid network interfaces are:.*'lo'"):
        get_ip_interface("no-such-interface0")
