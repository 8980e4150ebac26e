"""Cluster metadata: a nested dictionary of msgpack-able values kept by the scheduler
(``Client.set_metadata`` / ``Client.get_metadata``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.rpc import Msg, Peer

if TYPE_CHECKING:
    from conveyor.server.scheduler import Scheduler


class MetadataExtension:
    """Scheduler side of ``Client.set_metadata`` and ``Client.get_metadata``."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.metadata: dict[Any, Any] = {}
        scheduler.handlers.update({"set-metadata": self.set, "get-metadata": self.get})

    def set(self, peer: Peer, msg: Msg) -> None:
        """Store ``msg["value"]`` at the path ``msg["keys"]``, making (or replacing with)
        dictionaries along the way."""
        keys = _path(msg)
        node = self.metadata
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[keys[-1]] = msg.get("value")

    def get(self, peer: Peer, msg: Msg) -> dict[str, Any]:
        """``{"found": True, "value": ...}`` for the path ``msg["keys"]``, or
        ``{"found": False}``."""
        value: Any = self.metadata
        for key in _path(msg):
            if not isinstance(value, dict) or key not in value:
                return {"found": False}
            value = value[key]
        return {"found": True, "value": value}


def _path(msg: Msg) -> list[Any]:
    keys = list(msg["keys"])
    if not keys:
        raise ValueError("a metadata path needs at least one key")
    for key in keys:
        hash(key)  # TypeError: a key must be a str, number or tuple
    return keys
