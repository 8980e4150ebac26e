"""``da.store`` on a cluster: targets that cannot work there are refused, and locks that
only work inside one process are replaced by the cluster's.

dask builds a store as tasks calling ``store_chunk``/``load_store_chunk`` with the target
and a lock as arguments. On conveyor every task runs in a worker process (or, in-process,
on an unpickled copy of its spec), so:

* a ``numpy.ndarray`` target held by the client (a ``numpy.memmap`` too: it pickles
  as a copy of its data) would be written in copies and stay unchanged here: refused,
  with the fix;
* the ``SerializableLock`` dask passes (``lock=True``) serializes writers within one
  process only: it is replaced by a :class:`conveyor.Lock` of the same name, held on
  the scheduler, so writers on all workers take turns.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any

from dask._task_spec import DataNode, GraphNode, Task, TaskRef

NUMPY_TARGET = (
    "da.store into a numpy.ndarray held by this process cannot work on a cluster: each "
    "task writes into its own copy and the array here stays unchanged (a numpy.memmap "
    "pickles as a copy too). Store into storage the workers share (zarr, h5py or a file "
    "on a shared disk), or compute the result (x.compute()) and assign it here."
)


def _store_functions() -> tuple[Callable[..., Any], ...]:
    """dask.array's store task functions, if dask.array is loaded (else no graph can
    hold them)."""
    module = sys.modules.get("dask.array.core")
    if module is None:
        return ()
    names = ("store_chunk", "load_store_chunk")
    return tuple(f for f in (getattr(module, n, None) for n in names) if f is not None)


def check_stores(
    graph: dict[Any, GraphNode], make_lock: Callable[[str], Any] | None
) -> dict[Any, GraphNode]:
    """``graph`` with its store tasks checked, and their process-local locks replaced
    by ``make_lock(name)`` (when given); nodes are copied, never changed (dask may
    cache them). Raises ValueError for a numpy target. Fused tasks are looked into."""
    funcs = _store_functions()
    if not funcs:
        return graph
    fixer = _StoreFixer(funcs, make_lock, graph)
    replaced = {}
    for key, node in graph.items():
        new = fixer.fix(node)
        if new is not node:
            replaced[key] = new
    return {**graph, **replaced} if replaced else graph


class _StoreFixer:
    def __init__(
        self,
        funcs: tuple[Callable[..., Any], ...],
        make_lock: Callable[[str], Any] | None,
        graph: dict[Any, GraphNode],
    ) -> None:
        self.funcs = funcs
        self.make_lock = make_lock
        self.graph = graph
        self.locks: dict[str, Any] = {}

    def fix(self, node: Any, scope: dict[Any, Any] | None = None) -> Any:
        """``node`` itself, or a copy with its stores' locks replaced. ``scope``: the
        fused subgraph the node is in, where its references point first."""
        if type(node) is not Task:
            return node
        if node.func in self.funcs:
            return self._store(node, scope or {})
        if node.args and type(node.args[0]) is dict:  # a fused subgraph
            inner = node.args[0]
            # (subgraph, output key, input names, *inputs): the names stand for the inputs
            names = node.args[2] if len(node.args) > 2 and type(node.args[2]) is tuple else ()
            inner_scope = {**dict(zip(names, node.args[3:], strict=False)), **inner}
            fixed = {k: self.fix(v, inner_scope) for k, v in inner.items()}
            if any(fixed[k] is not v for k, v in inner.items()):
                return _copy(node, args=(fixed, *node.args[1:]))
        return node

    def _value(self, arg: Any, scope: dict[Any, Any]) -> Any:
        """What a task argument stands for, as far as the graph says without running."""
        for _ in range(10):  # references to references: bounded
            if isinstance(arg, DataNode):
                return arg.value
            if not isinstance(arg, TaskRef):
                return arg
            arg = scope.get(arg.key, self.graph.get(arg.key))
        return None

    def _store(self, node: Task, scope: dict[Any, Any]) -> Any:
        value = self._value(node.args[1], scope) if len(node.args) > 1 else None
        if _is_client_ndarray(value):
            raise ValueError(NUMPY_TARGET)
        lock = node.kwargs.get("lock")
        if self.make_lock is None or lock is None or isinstance(lock, bool):
            return node
        if _is_cluster_lock(lock):
            return node
        name = f"dask-store-{getattr(lock, 'token', id(lock))}"
        if name not in self.locks:
            self.locks[name] = self.make_lock(name)
        return _copy(node, kwargs={**node.kwargs, "lock": self.locks[name]})


def _copy(node: Task, **changes: Any) -> Task:
    new = copy.copy(node)
    for name, value in changes.items():
        setattr(new, name, value)
    return new


def _is_client_ndarray(value: Any) -> bool:
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return False
    return isinstance(value, numpy.ndarray)


def _is_cluster_lock(lock: Any) -> bool:
    return type(lock).__module__.startswith("conveyor.")
