"""Running one task on a worker thread, and packing its outcome for the event loop."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
import time
import traceback as tb_module
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dask._task_spec import GraphNode, Task
from dask.sizeof import sizeof
from dask.utils import typename

from conveyor.protocol import CallChunk, pack_exception, unpickle_bytes

logger = logging.getLogger("conveyor.worker")


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


def warm_imports(names: Iterable[str]) -> list[str]:
    """Import each of ``names`` that is installed; return the ones now imported.

    Otherwise the first task or transfer that needs a module imports it inside its own
    time: numpy costs about 50 ms, as long as receiving 100 MB. A module that is not
    installed is skipped; one whose import fails is logged and skipped, and the worker
    runs on (a task that needs it will fail with the real error).
    """
    imported = []
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                continue
            importlib.import_module(name)
        except Exception:
            logger.warning("Importing %r at start failed", name, exc_info=True)
            continue
        imported.append(name)
    return imported


class FunctionStore:
    """Shared blobs a worker was sent once, by id (a function, or a chunk of graph nodes
    or call arguments), unpickled on first use; the scheduler says when to drop them."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._loaded: dict[str, Any] = {}
        #: task threads load blobs: each is unpickled once, and not kept once discarded
        self._lock = threading.Lock()

    def add(self, fid: str, blob: bytes) -> None:
        """Keep the pickled ``blob`` under ``fid``."""
        if fid not in self._blobs:
            self._blobs[fid] = blob

    def discard(self, fid: str) -> None:
        """Forget ``fid`` (no task here needs it any more)."""
        with self._lock:
            self._blobs.pop(fid, None)
            self._loaded.pop(fid, None)

    def __len__(self) -> int:
        return len(self._blobs)

    def get(self, fid: str) -> Any:
        """The object with id ``fid`` (KeyError if it was never sent)."""
        obj = self._loaded.get(fid)
        if obj is None:
            with self._lock:
                obj = self._loaded.get(fid)
                if obj is None:
                    obj = unpickle_bytes(self._blobs[fid])
                    self._loaded[fid] = obj
        return obj


def build_task(
    key: Any, run_spec: tuple[str | None, Any], functions: FunctionStore
) -> Callable[[Any], Any]:
    """The task a run spec describes, as a callable taking its dependencies' values:
    a graph node, a row of a shared argument chunk, or a call of a shared function."""
    fid, spec = run_spec
    if fid is None:
        node = unpickle_bytes(spec)
        if not isinstance(node, GraphNode):
            raise TypeError(f"run spec is a {type(node).__name__}, not a dask task")
        return node
    if isinstance(spec, int):  # an index into a shared chunk of graph nodes or arguments
        chunk = functions.get(fid)
        if isinstance(chunk, CallChunk):
            func = functions.get(chunk.function)
            if not callable(func):
                raise TypeError(f"shared object {chunk.function} is not a function")
            return chunk.task(key, spec, func)
        node = chunk[spec]
        # A node may carry another key than the one the graph files it under (dask's
        # from_delayed maps each partition's key to an alias named for its target): the
        # value it computes is stored under ``key`` all the same, as dask itself does.
        if not isinstance(node, GraphNode):
            raise TypeError(f"shared graph chunk {fid} has no task at {spec} for {key!r}")
        return node
    func = functions.get(fid)
    if not callable(func):
        raise TypeError(f"shared object {fid} is not a function")
    call = unpickle_bytes(spec)
    if not isinstance(call, tuple) or len(call) != 2:
        raise TypeError("a call's run spec must be (args, kwargs)")
    args, kwargs = call
    return Task(key, func, *args, **kwargs)


def run_task(
    key: Any, run_spec: tuple[str | None, Any], deps: dict[Any, Any], functions: FunctionStore
) -> Outcome:
    """Deserialize and run one task with its dependencies' values (on a worker thread)."""
    start = time.time()
    try:
        value = build_task(key, run_spec, functions)(deps)
        nbytes, kind = sizeof(value), typename(type(value))
    except BaseException as e:  # SystemExit from a task fails the task, not the thread
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
    return Outcome(True, start, stop, value, nbytes, kind)
