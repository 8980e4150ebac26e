"""Dask collections on a conveyor client: ``compute``, ``persist``, ``futures_of``.

A collection becomes one dask expression (``collections_to_expr``), optimized on the
client; its graph is culled, ordered and sent like any other (``graph.graph_messages``).
``compute`` adds dask's finalize step, so each collection is one future holding its
whole result; ``persist`` keeps every output key and rebuilds the collection around the
futures (``__dask_postpersist__``), so later computations on it start from data that is
already on the cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from dask._expr import FinalizeCompute
from dask._task_spec import TaskRef
from dask.base import collections_to_expr, is_dask_collection
from dask.delayed import delayed

from conveyor.client.coordination import Lock
from conveyor.client.future import Future
from conveyor.client.graph import graph_messages, normalize_key
from conveyor.client.options import check_fifo_timeout, task_options
from conveyor.client.structure import flatten_keys

if TYPE_CHECKING:
    from conveyor.client.shape import ClientShape


class CollectionsMixin:
    """The Client's methods for dask collections."""

    def compute(
        self: ClientShape,
        collections: Any,
        sync: bool = False,
        optimize_graph: bool = True,
        workers: str | Iterable[str] | None = None,
        allow_other_workers: bool = False,
        resources: dict[str, float] | None = None,
        retries: int | None = None,
        priority: int = 0,
        fifo_timeout: Any = "60s",
        actors: Any = None,
        traverse: bool = True,
    ) -> Any:
        """Start computing dask collections on the cluster.

        Returns a Future per collection (the same structure as given: one collection,
        or a list/tuple of them; arguments that are not collections come back as they
        are). With ``sync=True``, waits and returns the results instead. Lists, tuples,
        dicts and sets holding collections are computed as one delayed value when
        ``traverse`` is true. The keywords set the options of every task, as for
        :meth:`submit`.
        """
        check_fifo_timeout(fifo_timeout)
        singleton = not isinstance(collections, (list, tuple, set, frozenset))
        items = [collections] if singleton else list(collections)
        if traverse:
            items = [
                delayed(a) if isinstance(a, (list, set, tuple, dict, Iterator)) else a
                for a in items
            ]
        found = [a for a in items if is_dask_collection(a)]
        futures: dict[Any, Future] = {}
        names: list[Any] = []
        if found:
            expr = FinalizeCompute(collections_to_expr(found, optimize_graph)).optimize()  # type: ignore[no-untyped-call]
            names = list(flatten_keys(expr.__dask_keys__()))  # type: ignore[no-untyped-call]
            futures = self._graph_to_futures(
                expr,
                names,
                workers=workers,
                allow_other_workers=allow_other_workers,
                resources=resources,
                retries=retries,
                priority=priority,
                actors=actors,
            )
        out: list[Any] = []
        position = 0
        for a in items:
            if is_dask_collection(a):
                out.append(futures[names[position]])
                position += 1
            else:
                out.append(a)
        if not sync:
            return out[0] if singleton else out
        if self.asynchronous:
            return _gathered(self.gather(out), singleton)
        result = self.gather(out)
        return result[0] if singleton else result

    def persist(
        self: ClientShape,
        collections: Any,
        optimize_graph: bool = True,
        workers: str | Iterable[str] | None = None,
        allow_other_workers: bool = False,
        resources: dict[str, float] | None = None,
        retries: int | None = None,
        priority: int = 0,
        fifo_timeout: Any = "60s",
        actors: Any = None,
    ) -> Any:
        """Start computing dask collections and return them backed by futures.

        The result is the same kind of collection (one, or a list of them), whose graph
        holds the futures of its computation: computing it later, or anything built on
        it, starts from the data on the cluster. ``dask.persist(x)`` and ``x.persist()``
        call this when this client is dask's scheduler.
        """
        check_fifo_timeout(fifo_timeout)
        singleton = not isinstance(collections, (list, tuple, set, frozenset))
        items = [collections] if singleton else list(collections)
        bad = [type(a).__name__ for a in items if not is_dask_collection(a)]
        if bad:
            raise TypeError(f"persist takes dask collections, not {', '.join(bad)}")
        expr = collections_to_expr(items, optimize_graph).optimize()
        keys = expr.__dask_keys__()  # type: ignore[no-untyped-call]
        futures = self._graph_to_futures(
            expr,
            list(flatten_keys(keys)),
            workers=workers,
            allow_other_workers=allow_other_workers,
            resources=resources,
            retries=retries,
            priority=priority,
            actors=actors,
        )
        rebuilt = []
        for collection, ks in zip(items, keys, strict=True):
            func, args = collection.__dask_postpersist__()
            rebuilt.append(func({k: futures[k] for k in flatten_keys(ks)}, *args))
        return rebuilt[0] if singleton else rebuilt

    def get(
        self: ClientShape,
        dsk: Any,
        keys: Any,
        *,
        sync: bool = True,
        workers: str | Iterable[str] | None = None,
        allow_other_workers: bool = False,
        resources: dict[str, float] | None = None,
        retries: int | None = None,
        priority: float = 0,
        fifo_timeout: Any = "60s",
        actors: Any = None,
    ) -> Any:
        """Compute ``keys`` of a task graph (dict, HighLevelGraph or dask expression).

        This is what ``dask.compute(..., scheduler=client)`` calls. ``keys`` may be one
        key or nested lists of keys; the results come back in the same structure. With
        ``sync=False``, returns Futures in that structure instead of waiting.

        The task options (``workers``, ``allow_other_workers``, ``resources``,
        ``retries``, ``priority``) apply to every task, under each task's own
        ``dask.annotate`` annotations; ``fifo_timeout`` has no effect (see :meth:`submit`).
        """
        check_fifo_timeout(fifo_timeout)
        futures = self._graph_to_futures(
            dsk,
            list(flatten_keys(keys)),
            workers=workers,
            allow_other_workers=allow_other_workers,
            resources=resources,
            retries=retries,
            priority=priority,
            actors=actors,
        )
        packed = _pack_keys(keys, futures)
        if not sync:
            return packed
        try:
            return self.gather(packed)
        finally:
            del futures, packed

    def _graph_to_futures(
        self: ClientShape,
        dsk: Any,
        keys: list[Any],
        *,
        workers: str | Iterable[str] | None = None,
        allow_other_workers: bool = False,
        resources: dict[str, float] | None = None,
        retries: int | None = None,
        priority: float = 0,
        actors: Any = None,
    ) -> dict[Any, Future]:
        """Send the part of graph ``dsk`` that ``keys`` need; a Future per key. The
        keywords are the call's task options (see :meth:`get`).

        Keys the graph refers to but does not hold are futures this client has
        already (a persisted collection, ``delayed(f)(future)``): they become plain
        dependencies.
        """
        if actors:
            raise NotImplementedError(
                "actors= in get/compute/persist is not supported: make an actor with "
                "client.submit(cls, actor=True)"
            )
        call = task_options(
            workers=workers,
            allow_other_workers=allow_other_workers,
            retries=retries,
            resources=resources,
            priority=priority,
        )
        flat = [normalize_key(k) for k in keys]
        msgs, blobs = graph_messages(
            dsk, keys, known=self.futures, options=call, make_lock=_cluster_lock
        )
        futures = dict(zip(flat, self._futures(flat), strict=True))
        self._send(
            {
                "op": "update-graph",
                "tasks": msgs,
                "keys": flat,
                "priority": priority or 0,
                "functions": blobs,
            }
        )
        return futures

    def futures_of(self: ClientShape, collections: Any) -> list[Future]:
        """The futures inside ``collections`` (see :func:`futures_of`)."""
        return futures_of(collections)


async def _gathered(results: Any, singleton: bool) -> Any:
    """``compute(sync=True)`` from an asynchronous client: await the gather."""
    values = await results
    return values[0] if singleton else values


def futures_of(obj: Any) -> list[Future]:
    """Every Future inside ``obj``: nested lists, tuples, sets and dict values, and the
    graphs of dask collections (persisted ones hold their futures there), once each."""
    stack = [obj]
    seen: set[Any] = set()
    out: list[Future] = []
    while stack:
        x = stack.pop()
        kind = type(x)
        if kind in (list, tuple, set, frozenset):
            stack.extend(x)
        elif kind is dict:
            stack.extend(x.values())
        elif isinstance(x, TaskRef):
            if isinstance(x, Future) and x.key not in seen:
                seen.add(x.key)
                out.append(x)
        elif is_dask_collection(x):
            stack.extend(x.__dask_graph__().values())
    return out[::-1]


def fire_and_forget(obj: Any) -> None:
    """Run the futures in ``obj`` to completion even once nothing holds them: the
    scheduler keeps each one wanted until it finishes or fails, then lets it go."""
    by_client: dict[int, tuple[Any, list[Any]]] = {}
    for fut in futures_of(obj):
        entry = by_client.setdefault(id(fut.client), (fut.client, []))
        entry[1].append(fut.key)
    for client, keys in by_client.values():
        client._send({"op": "fire-and-forget", "keys": keys})


def _cluster_lock(name: str) -> Lock:
    """The lock a ``da.store`` takes on the cluster: bound, wherever it is unpickled, to
    the client there (the worker's, inside a task)."""
    return Lock(name=name)


def _pack_keys(keys: Any, futures: dict[Any, Future]) -> Any:
    if isinstance(keys, list):
        return [_pack_keys(k, futures) for k in keys]
    return futures[keys]
