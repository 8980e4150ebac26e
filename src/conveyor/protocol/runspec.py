"""Argument chunks: the run specs of many calls of one function, pickled together.

``Client.map`` sends its tasks as a batch: one shared blob holds the arguments of up to a
few thousand calls (a :class:`CallChunk`), each task's run spec is its row's index, and the
function is a separate shared blob the chunk names. The scheduler never opens either; a
worker unpickles each chunk once, however many of its tasks it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dask._task_spec import GraphNode, Task


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
