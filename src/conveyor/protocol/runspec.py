"""Run specs: how a task travels, and how a worker (or a client recreating a failed task)
turns one back into something to call.

Argument chunks: the run specs of many calls of one function, pickled together.

``Client.map`` sends its tasks as a batch: one shared blob holds the arguments of up to a
few thousand calls (a :class:`CallChunk`), each task's run spec is its row's index, and the
function is a separate shared blob the chunk names. The scheduler never opens either; a
worker unpickles each chunk once, however many of its tasks it runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dask._task_spec import GraphNode, Task

from conveyor.protocol.serialize import loads_function, unpickle_bytes


class CallChunk:
    """The arguments of calls ``function(*rows[i], **kwargs)``.

    ``function`` is the id of the shared blob holding the function. When ``parsed``, rows
    and ``kwargs`` may hold dask task references (futures passed as arguments), resolved
    from the task's dependencies when it runs.
    """

    __slots__ = ("function", "kwargs", "parsed", "rows")

    def __init__(
        self,
        function: str,
        rows: Sequence[tuple[Any, ...]],
        kwargs: Mapping[str, Any],
        parsed: bool,
    ) -> None:
        self.function = function
        self.rows = rows
        self.kwargs = kwargs
        self.parsed = parsed

    def __reduce__(self) -> tuple[Any, ...]:
        return CallChunk, (self.function, self.rows, self.kwargs, self.parsed)

    def __len__(self) -> int:
        return len(self.rows)

    def task(self, key: Any, index: int, func: Callable[..., Any]) -> Callable[[Any], Any]:
        """Task ``index`` as a callable taking its dependencies' values by key."""
        if not 0 <= index < len(self.rows):
            raise IndexError(f"argument chunk of {len(self.rows)} rows has no row {index}")
        row = self.rows[index]
        if self.parsed:
            node: GraphNode = Task(key, func, *row, **self.kwargs)
            return node
        return _Call(func, row, self.kwargs)


class _Call:
    """A call whose arguments hold no task references."""

    __slots__ = ("args", "func", "kwargs")

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: Any) -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs

    def __call__(self, deps: Any) -> Any:
        return self.func(*self.args, **self.kwargs)


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


def unpickle_call(
    function: bytes, args: bytes, kwargs: bytes, what: str
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """A function sent to run on a server (``Client.run``, ``run_on_scheduler``) and its
    arguments, unpickled; TypeError naming ``what`` if they are not a call."""
    func = loads_function(function)
    call_args = unpickle_bytes(args)
    call_kwargs = unpickle_bytes(kwargs)
    if not isinstance(call_args, tuple) or not isinstance(call_kwargs, dict):
        raise TypeError(f"{what} needs args as a tuple and kwargs as a dict")
    return func, call_args, call_kwargs
