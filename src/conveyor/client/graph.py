"""Turning what users submit into task messages for the scheduler.

Everything that needs dask (task spec, culling, ordering) happens here, on the client:
the scheduler receives keys, dependency keys, priorities and opaque pickled run specs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import cloudpickle
from dask._task_spec import GraphNode, Task, convert_legacy_graph, cull, parse_input
from dask.base import tokenize
from dask.order import order
from dask.utils import funcname

Msg = dict[str, Any]


def submit_key(func: Callable[..., Any], args: Any, kwargs: Any, pure: bool) -> str:
    """A key for one call: deterministic (content hash) when ``pure``, else unique."""
    name = funcname(func)
    token = tokenize(func, args, kwargs) if pure else uuid.uuid4().hex
    return f"{name}-{token}"


def make_task(
    key: Any, func: Callable[..., Any], args: Iterable[Any], kwargs: Mapping[str, Any]
) -> Task:
    """A dask Task calling ``func``; futures anywhere in the arguments become dependencies."""
    parsed: dict[str, Any] = {k: parse_input(v) for k, v in kwargs.items()}
    return Task(key, func, *(parse_input(a) for a in args), **parsed)


def task_message(
    node: GraphNode,
    order_: int = 0,
    workers: list[str] | None = None,
    allow_other_workers: bool = False,
    retries: int = 0,
) -> Msg:
    """The wire form of one task: the run spec is pickled here, once, on the client.

    cloudpickle, so functions defined in ``__main__`` or interactively travel by value.
    """
    msg: Msg = {
        "key": node.key,
        "spec": cloudpickle.dumps(node, protocol=5),
        "deps": list(node.dependencies),
        "order": order_,
    }
    if workers:
        msg["workers"] = list(workers)
        msg["allow_other_workers"] = allow_other_workers
    if retries:
        msg["retries"] = retries
    return msg


def as_graph(obj: Any) -> dict[Any, GraphNode]:
    """A dict of task-spec nodes from a dict graph, HighLevelGraph or dask expression."""
    if hasattr(obj, "__dask_graph__") and not isinstance(obj, Mapping):
        obj = obj.__dask_graph__()
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a task graph (a mapping), got {type(obj).__name__}")
    graph: dict[Any, GraphNode] = convert_legacy_graph(dict(obj))
    return graph


def graph_messages(
    dsk: Any,
    keys: list[Any],
    workers: list[str] | None = None,
    allow_other_workers: bool = False,
    retries: int = 0,
) -> list[Msg]:
    """Cull ``dsk`` to what ``keys`` need, order it, and encode each task."""
    graph = as_graph(dsk)
    missing = [k for k in keys if k not in graph]
    if missing:
        raise KeyError(f"keys not in the graph: {missing[:5]}")
    graph = cull(graph, keys)
    priorities = order(graph) if len(graph) > 1 else dict.fromkeys(graph, 0)
    return [
        task_message(node, priorities[key], workers, allow_other_workers, retries)
        for key, node in graph.items()
    ]
