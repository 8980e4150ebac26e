"""Turning what users submit into task messages for the scheduler.

Everything that needs dask (task spec, culling, ordering) happens here, on the client:
the scheduler receives keys, dependency keys, priorities and opaque pickled run specs.

Three kinds of run spec travel:

* a *call* (``submit``): the pickled ``(args, kwargs)`` plus the id of a function
  that is pickled once and sent once per graph (``functions``), however many tasks use it;
* a *row* (``map``): an index into a :class:`~conveyor.protocol.CallChunk` holding the
  arguments of up to ``MAP_CHUNK`` calls, pickled together; tasks travel as a batch (key
  prefix and count, shared dependencies) rather than one message each;
* a *node* (graphs from collections): an index into a blob holding the pickled nodes of
  up to ``GRAPH_CHUNK`` tasks, consecutive in priority order. Pickled together, the
  functions and constants the nodes share are written once; the blob travels like a
  shared function (once per worker) and each worker unpickles it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import numbers
import uuid
import warnings
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

import dask.config
from dask._expr import Expr
from dask._task_spec import GraphNode, convert_legacy_graph, cull, parse_input
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from dask.order import order
from dask.utils import format_bytes, funcname

from conveyor.client.options import (
    OPTION_NAMES,
    GraphOptions,
    call_options,
    check_fifo_timeout,
    task_options,
)
from conveyor.client.stores import check_stores
from conveyor.protocol import CallChunk, dumps_function, dumps_spec

__all__ = [
    "GraphOptions",
    "MapKeys",
    "annotated_graph",
    "as_graph",
    "call_message",
    "call_options",
    "check_fifo_timeout",
    "graph_messages",
    "map_batches",
    "normalize_key",
    "submit_key",
    "task_options",
]

Msg = dict[str, Any]

#: graph nodes pickled together in one shared blob
GRAPH_CHUNK = 1000
#: calls of a ``map`` whose arguments are pickled together, sent as one batch
MAP_CHUNK = 5000
#: argument types that cannot hold a future: rows of these skip dask's input parsing
_PLAIN = frozenset({int, float, str, bytes, bool, complex, type(None)})


#: key types that travel as they are
_KEY_TYPES = (str, int, float, bytes)


def normalize_key(key: Any) -> Any:
    """``key`` as the wire carries it: numpy scalars (which dask accepts in keys, e.g.
    from ``da.diagonal``) become ``int``/``float``, inside tuples too. A key of any other
    type raises ``TypeError``: keys are str, bytes, int, float, or tuples of them.
    """
    kind = type(key)
    if kind in _KEY_TYPES:
        return key
    if kind is tuple:
        for part in key:
            if type(part) not in _KEY_TYPES:
                return tuple(normalize_key(k) for k in key)
        return key
    if isinstance(key, bool):
        return int(key)
    if isinstance(key, numbers.Integral):
        return int(key)
    if isinstance(key, numbers.Real):
        return float(key)
    if isinstance(key, str):  # a subclass (a StrEnum): its plain text
        return str.__str__(key)
    if isinstance(key, bytes):
        return bytes(key)
    raise TypeError(
        f"{key!r} (a {kind.__name__}) cannot be a task key: keys are str, bytes, int, "
        "float or tuples of them"
    )


#: bytes of pickled arguments per task above which the client warns (sent every time)
LARGE_ARGUMENTS = 1_000_000
#: bytes of a pickled graph above which the client warns
LARGE_GRAPH = 10_000_000


def warn_large(nbytes: int, what: str) -> None:
    """Warn that ``what`` pickles to ``nbytes``: large constants travel with every task
    (and every call) that holds them, where a scattered value travels once."""
    warnings.warn(
        f"Sending a large object: {what} pickle to {format_bytes(nbytes)}. Values this "
        "large are sent again with every call that passes them; scatter them once "
        "(future = client.scatter(value)) and pass the future instead, or load the data "
        "inside the tasks.",
        UserWarning,
        stacklevel=4,
    )


def submit_key(func: Callable[..., Any], args: Any, kwargs: Any, pure: bool) -> str:
    """A key for one call: deterministic (content hash) when ``pure``, else unique."""
    name = funcname(func)
    if not pure:
        return f"{name}-{uuid.uuid4().hex}"
    return f"{name}-{call_token(tokenize(func, kwargs), tuple(args))}"


def call_token(base: str, args: tuple[Any, ...]) -> str:
    """The content hash of calling what ``base`` tokenizes (function and keyword
    arguments) on ``args``.

    Arguments of plain types hash by their ``repr``, which is exact for them: about
    1 us instead of dask's ``tokenize`` (tens of us). ``map`` tokenizes the function
    once for all its rows; ``submit`` and ``map`` give a call the same key.
    """
    if all(type(a) in _PLAIN for a in args):
        return hashlib.blake2b(f"{base}{args!r}".encode(), digest_size=16).hexdigest()
    return tokenize(base, args)


def function_entry(func: Callable[..., Any]) -> tuple[str, bytes]:
    """The id and pickled bytes of ``func`` (cloudpickle, cached per function)."""
    return blob_entry(dumps_function(func))


def blob_entry(blob: bytes) -> tuple[str, bytes]:
    """A shared blob with its content id."""
    return hashlib.blake2b(blob, digest_size=12).hexdigest(), blob


def call_message(
    key: Any,
    fid: str,
    args: Iterable[Any],
    kwargs: Mapping[str, Any],
    order_: int = 0,
    options: Msg | None = None,
) -> Msg:
    """A task calling function ``fid``; futures in the arguments become dependencies.

    ``options``: the task's options in wire form (see :func:`task_options`)."""
    parsed_args = tuple(parse_input(a) for a in args)
    parsed_kwargs = {k: parse_input(v) for k, v in kwargs.items()}
    deps = _dependencies((*parsed_args, *parsed_kwargs.values()))
    spec = dumps_spec((parsed_args, parsed_kwargs))
    if len(spec) > LARGE_ARGUMENTS:
        warn_large(len(spec), f"the arguments of task {key!r}")
    msg: Msg = {
        "key": key,
        "spec": spec,
        "deps": list(deps),
        "order": order_,
        "fn": fid,
    }
    if options:
        msg.update(options)
    return msg


class MapKeys:
    """How the tasks of one ``map`` are named, chunk by chunk.

    * ``given``: the caller's list of keys, in row order;
    * ``token`` (pure): ``f"{prefix}-{call_token(token, row)}"``, so every key is in the
      group ``prefix`` and batches say so (the scheduler checks);
    * otherwise (unique): ``f"{prefix}-{i}"`` for row ``i``, with ``prefix`` made unique
      per call; batches carry only the prefix and a count.
    """

    __slots__ = ("given", "prefix", "token")

    def __init__(
        self, prefix: str, token: str | None = None, given: list[Any] | None = None
    ) -> None:
        self.prefix = prefix
        self.token = token
        self.given = given

    def name(self, batch: Msg, start: int, rows: list[tuple[Any, ...]]) -> list[Any]:
        """The keys of ``rows`` (from row ``start`` on); says in ``batch`` how they travel."""
        if self.given is not None:
            keys = self.given[start : start + len(rows)]
        elif self.token is not None:
            prefix, token = self.prefix, self.token
            keys = [f"{prefix}-{call_token(token, row)}" for row in rows]
            batch["group"] = prefix
        else:
            batch.update(prefix=self.prefix, start=start, count=len(rows))
            return [f"{self.prefix}-{i}" for i in range(start, start + len(rows))]
        batch["keys"] = keys
        return keys


def map_batches(
    fid: str,
    rows: Iterable[tuple[Any, ...]],
    kwargs: Mapping[str, Any],
    keys: MapKeys,
    options: Msg,
    chunk_size: int | None = None,
) -> Iterator[tuple[Msg, str, bytes, list[Any]]]:
    """The batches of a ``map`` of function ``fid``, made as ``rows`` are read: each with
    its argument chunk's id and bytes, and the keys of its tasks.

    ``options`` (wire form: workers, retries, resources; see :func:`task_options`) go
    into every batch; a priority travels with the message instead.
    """
    options = {k: v for k, v in options.items() if k != "priority"}
    parsed_kwargs = {k: parse_input(v) for k, v in kwargs.items()}
    shared = _dependencies(parsed_kwargs.values())
    rows = iter(rows)
    start = 0
    size = chunk_size or MAP_CHUNK
    while part := list(islice(rows, size)):
        row_deps: list[list[Any]] | None = None
        args: list[tuple[Any, ...]] = part
        if not all(type(a) in _PLAIN for row in part for a in row):
            args = [tuple(parse_input(a) for a in row) for row in part]
            row_deps = [list(_dependencies(row)) for row in args]
            if not any(row_deps):
                row_deps, args = None, part
        parsed = bool(shared) or row_deps is not None
        chunk = CallChunk(fid, args, parsed_kwargs if parsed else kwargs, parsed)
        cid, blob = blob_entry(dumps_spec(chunk))
        if len(blob) > LARGE_ARGUMENTS * len(part):
            warn_large(len(blob), f"the arguments of {len(part)} tasks of a map")
        batch: Msg = {"function": fid, "chunk": cid, "order": start, **options}
        names = keys.name(batch, start, part)
        if shared:
            batch["deps"] = list(shared)
        if row_deps is not None:
            batch["row_deps"] = row_deps
        yield batch, cid, blob, names
        start += len(part)


def _dependencies(args: Iterable[Any]) -> set[Any]:
    """Keys of the tasks that parsed arguments refer to."""
    deps: set[Any] = set()
    for a in args:
        if isinstance(a, GraphNode):
            deps.update(a.dependencies)
    return deps


def as_graph(obj: Any) -> dict[Any, GraphNode]:
    """A dict of task-spec nodes from a dict graph, HighLevelGraph or dask expression."""
    if hasattr(obj, "__dask_graph__") and not isinstance(obj, Mapping):
        obj = obj.__dask_graph__()
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a task graph (a mapping), got {type(obj).__name__}")
    graph: dict[Any, GraphNode] = convert_legacy_graph(dict(obj))
    return graph


def annotated_graph(obj: Any) -> tuple[dict[Any, GraphNode], dict[str, dict[Any, Any]]]:
    """The graph of ``obj`` (as :func:`as_graph`) and its per-task option annotations,
    ``{option: {key: value}}``.

    dask 2026 hands ``get`` a dask expression; its ``__dask_annotations__`` are those of
    the layers of its optimized graph. Low-level fusion (on by default for arrays) merges
    tasks into layers that carry no annotations, so when the expression's layers carry
    task options and the user left ``optimization.fuse.active`` unset, the graph is
    made without it (blockwise fusion, which keeps annotations, still runs). A
    HighLevelGraph's annotations are read from its layers; a plain dict has none.
    """
    annotations: dict[str, dict[Any, Any]] = {}
    if isinstance(obj, HighLevelGraph):
        for layer in obj.layers.values():
            for name, value in (layer.annotations or {}).items():
                if name in OPTION_NAMES:
                    by_key = annotations.setdefault(name, {})
                    for k in layer:
                        by_key[k] = value(k) if callable(value) else value
    elif isinstance(obj, Expr):
        expr = obj
        unfused = dask.config.get("optimization.fuse.active", None) is None
        keep: Any = contextlib.nullcontext()
        if unfused and _layers_carry_options(expr):
            keep = dask.config.set({"optimization.fuse.active": False})
        with keep:
            obj = expr.__dask_graph__()  # type: ignore[no-untyped-call]
            found = expr.__dask_annotations__()  # type: ignore[no-untyped-call]
        annotations = {n: m for n, m in found.items() if n in OPTION_NAMES and m}
    return as_graph(obj), annotations


def _layers_carry_options(expr: Expr) -> bool:
    """Whether a layer of a graph inside ``expr`` (before optimization) is annotated
    with a task option."""
    todo: list[Any] = [expr]
    seen: set[int] = set()
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, HighLevelGraph):
            for layer in item.layers.values():
                if layer.annotations and not OPTION_NAMES.isdisjoint(layer.annotations):
                    return True
        elif isinstance(item, Expr):
            todo.extend(op for op in item.operands if isinstance(op, (Expr, HighLevelGraph)))
    return False


def graph_messages(
    dsk: Any,
    keys: list[Any],
    known: Container[Any] = (),
    options: Msg | None = None,
    make_lock: Callable[[str], Any] | None = None,
) -> tuple[list[Msg], dict[str, bytes]]:
    """Cull ``dsk`` to what ``keys`` need, order it, and encode it.

    ``known``: keys the scheduler has already (the client's futures). A graph may name
    them without holding them (dask drops an entry that only refers to a future of the
    same key), and ``keys`` may include them.

    ``options``: the call's task options in wire form (:func:`task_options` of its
    keywords). Each task carries its own: its annotations (``dask.annotate`` around the
    code that built it) over ``options`` over the annotations in force here.

    ``make_lock(name)``: the cluster-wide lock replacing the process-local lock of a
    ``da.store`` (see :mod:`conveyor.client.stores`).

    Returns the task messages and the shared blobs (by id) that their specs index into.
    """
    graph, annotations = annotated_graph(dsk)
    graph = check_stores(graph, make_lock)
    task_opts = GraphOptions(options or {}, annotations)
    missing = [k for k in keys if k not in graph and normalize_key(k) not in known]
    if missing:
        raise KeyError(f"keys not in the graph: {missing[:5]}")
    graph = cull(graph, [k for k in keys if k in graph])
    priorities = order(graph) if len(graph) > 1 else dict.fromkeys(graph, 0)
    ordered = sorted(graph, key=priorities.__getitem__)
    msgs: list[Msg] = []
    blobs: dict[str, bytes] = {}
    for start in range(0, len(ordered), GRAPH_CHUNK):
        chunk = ordered[start : start + GRAPH_CHUNK]
        bid, blob = blob_entry(dumps_spec([graph[k] for k in chunk]))
        blobs[bid] = blob
        for index, key in enumerate(chunk):
            msg = {
                "key": normalize_key(key),
                "spec": index,
                "deps": [normalize_key(d) for d in graph[key].dependencies],
                "order": priorities[key],
                "fn": bid,
            }
            opts = task_opts.of(key)
            if opts:
                msg.update(opts)
            msgs.append(msg)
    total = sum(len(b) for b in blobs.values())
    if total > LARGE_GRAPH:
        warn_large(total, f"a graph of {len(msgs)} tasks")
    return msgs, blobs
