"""Errors raised by the wire protocol."""

from __future__ import annotations

__all__ = ["ProtocolError"]


class ProtocolError(Exception):
    """A peer sent bytes that do not form a valid conveyor message."""
