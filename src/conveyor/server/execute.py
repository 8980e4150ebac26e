"""Running one task on a worker thread, and packing its outcome for the event loop."""

from __future__ import annotations

import time
import traceback as tb_module
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from dask._task_spec import GraphNode
from dask.sizeof import sizeof
from dask.utils import typename
from tblib import Traceback

from conveyor.protocol import pickle_bytes, unpickle_bytes


@dataclass(slots=True)
class Outcome:
    """What happened when a task ran. Exceptions travel pickled, as opaque bytes."""

    ok: bool
    start: float
    stop: float
    value: Any = None
    nbytes: int = 0
    type: str | None = None
    exception: bytes | None = None
    traceback: bytes | None = None
    exception_text: str = ""
    traceback_text: str = ""


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


def run_task(run_spec: Any, deps: dict[Any, Any]) -> Outcome:
    """Deserialize and run one task with its dependencies' values (on a worker thread)."""
    start = time.time()
    try:
        task = unpickle_bytes(run_spec)
        if not isinstance(task, GraphNode):
            raise TypeError(f"run spec is a {type(task).__name__}, not a dask task")
        value = task(deps)
    except Exception as e:
        stop = time.time()
        user_tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
        exc_bytes, tb_bytes = pack_exception(e, user_tb)
        return Outcome(
            False,
            start,
            stop,
            exception=exc_bytes,
            traceback=tb_bytes,
            exception_text=f"{type(e).__name__}: {e}",
            traceback_text="".join(tb_module.format_exception(e)),
        )
    stop = time.time()
    return Outcome(True, start, stop, value, sizeof(value), typename(type(value)))
