"""Turning what users submit into task messages for the scheduler.

Everything that needs dask (task spec, culling, ordering) happens here, on the client:
the scheduler receives keys, dependency keys, priorities and opaque pickled run specs.

Two kinds of run spec travel:

* a *call* (``submit``/``map``): the pickled ``(args, kwargs)`` plus the id of a function
  that is pickled once and sent once per graph (``functions``), however many tasks use it;
* a *node* (graphs from collections): the pickled dask task-spec node itself.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dask._task_spec import GraphNode, convert_legacy_graph, cull, parse_input
from dask.base import tokenize
from dask.order import order
from dask.utils import funcname

from conveyor.protocol import dumps_function, dumps_spec

Msg = dict[str, Any]


def submit_key(func: Callable[..., Any], args: Any, kwargs: Any, pure: bool) -> str:
    """A key for one call: deterministic (content hash) when ``pure``, else unique."""
    name = funcname(func)
    token = tokenize(func, args, kwargs) if pure else uuid.uuid4().hex
    return f"{name}-{token}"


def function_entry(func: Callable[..., Any]) -> tuple[str, bytes]:
    """The id and pickled bytes of ``func`` (cloudpickle, cached per function)."""
    blob = dumps_function(func)
    return hashlib.blake2b(blob, digest_size=12).hexdigest(), blob


def call_message(
    key: Any,
    fid: str,
    args: Iterable[Any],
    kwargs: Mapping[str, Any],
    order_: int = 0,
    workers: list[str] | None = None,
    allow_other_workers: bool = False,
    retries: int = 0,
) -> Msg:
    """A task calling function ``fid``; futures in the arguments become dependencies."""
    parsed_args = tuple(parse_input(a) for a in args)
    parsed_kwargs = {k: parse_input(v) for k, v in kwargs.items()}
    deps: set[Any] = set()
    for a in (*parsed_args, *parsed_kwargs.values()):
        if isinstance(a, GraphNode):
            deps.update(a.dependencies)
    msg: Msg = {
        "key": key,
        "spec": dumps_spec((parsed_args, parsed_kwargs)),
        "deps": list(deps),
        "order": order_,
        "fn": fid,
    }
    _add_options(msg, workers, allow_other_workers, retries)
    return msg


def node_message(node: GraphNode, order_: int = 0) -> Msg:
    """The wire form of one graph node: pickled here, once, on the client."""
    return {
        "key": node.key,
        "spec": dumps_spec(node),
        "deps": list(node.dependencies),
        "order": order_,
    }


def _add_options(
    msg: Msg, workers: list[str] | None, allow_other_workers: bool, retries: int
) -> None:
    if workers:
        msg["workers"] = list(workers)
        msg["allow_other_workers"] = allow_other_workers
    if retries:
        msg["retries"] = retries


def as_graph(obj: Any) -> dict[Any, GraphNode]:
    """A dict of task-spec nodes from a dict graph, HighLevelGraph or dask expression."""
    if hasattr(obj, "__dask_graph__") and not isinstance(obj, Mapping):
        obj = obj.__dask_graph__()
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a task graph (a mapping), got {type(obj).__name__}")
    graph: dict[Any, GraphNode] = convert_legacy_graph(dict(obj))
    return graph


def graph_messages(dsk: Any, keys: list[Any]) -> list[Msg]:
    """Cull ``dsk`` to what ``keys`` need, order it, and encode each task."""
    graph = as_graph(dsk)
    missing = [k for k in keys if k not in graph]
    if missing:
        raise KeyError(f"keys not in the graph: {missing[:5]}")
    graph = cull(graph, keys)
    priorities = order(graph) if len(graph) > 1 else dict.fromkeys(graph, 0)
    return [node_message(node, priorities[key]) for key, node in graph.items()]
