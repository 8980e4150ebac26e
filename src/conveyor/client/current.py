"""The process-wide default client (the most recent one created with set_as_default)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.client.client import Client

_current: list[Client] = []


def set_default(client: Client) -> None:
    """Make ``client`` the default for Futures created without one."""
    _current.append(client)


def unset_default(client: Client) -> None:
    """Forget ``client`` as a default (on close)."""
    while client in _current:
        _current.remove(client)


def default_client() -> Client:
    """The default client; ValueError if none is running."""
    if not _current:
        raise ValueError("No client found: start one with conveyor.Client()")
    return _current[-1]
