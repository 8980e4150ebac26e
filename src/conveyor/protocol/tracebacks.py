"""Exceptions and tracebacks as bytes: made where a task fails, rebuilt by a client.

The scheduler passes both through unopened. An exception that cannot be pickled (or
unpickled again) travels as a ``RuntimeError`` with its text; a traceback travels as
tblib's plain-data form.
"""

from __future__ import annotations

from types import TracebackType

from tblib import Traceback

from conveyor.protocol.serialize import pickle_bytes, unpickle_bytes


def pack_exception(exc: BaseException, tb: TracebackType | None) -> tuple[bytes, bytes | None]:
    """Pickle an exception (or a stand-in with its text) and its traceback frames."""
    try:
        exc_bytes = pickle_bytes(exc)
        unpickle_bytes(exc_bytes)
    except Exception:
        exc_bytes = pickle_bytes(RuntimeError(f"{type(exc).__name__}: {exc}"))
    try:
        tb_bytes: bytes | None = pickle_bytes(Traceback(tb).as_dict()) if tb else None
    except Exception:
        tb_bytes = None
    return exc_bytes, tb_bytes


def unpack_traceback(tb_bytes: bytes | None) -> TracebackType | None:
    """Rebuild a traceback pickled by :func:`pack_exception` (None if unavailable)."""
    if not tb_bytes:
        return None
    try:
        tb: TracebackType | None = Traceback.from_dict(unpickle_bytes(tb_bytes)).as_traceback()
        return tb
    except Exception:
        return None
