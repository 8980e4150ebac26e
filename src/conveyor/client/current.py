"""The process-wide default client, and dask's default scheduler while one exists.

Clients made with ``set_as_default=True`` stack up: the most recent one still open is
the default, for :class:`~conveyor.Future` objects made without a client and for plain
``dask.compute(x)`` / ``x.compute()``, which find it through ``dask.config``'s
``scheduler``, set to ``"conveyor"``: a name this module adds to dask's named schedulers
(a string, so the config still serializes, for worker processes among others). It
stands for the default client, so ``scheduler="conveyor"`` works anywhere, and inside
a task it means the worker's client.

While a conveyor client is dask's scheduler, DataFrame shuffles default to dask's
task-based method: the "disk" method writes partd files that only one process
sees, and conveyor's workers are processes, possibly on other hosts. A setting the user
made (``dataframe.shuffle.method``, or ``scheduler`` before the first client) is
restored when the last default client closes.

Inside a task on a worker, the default client is the worker's own (``get_client()``):
see :mod:`conveyor.client.worker_client`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import dask.base
import dask.config

if TYPE_CHECKING:
    from conveyor.client.client import Client

_lock = threading.RLock()
_stack: list[Client] = []
#: the config values conveyor replaced, as they were before the first default client
_saved: dict[str, Any] | None = None
_UNSET = object()
_KEYS = ("scheduler", "dataframe.shuffle.method")

#: the client of the worker running this task, if any (see ``register_task_client``)
_task_client: Callable[[], Client | None] | None = None


def register_task_client(find: Callable[[], Client | None]) -> None:
    """Say how to find the client of the worker running the calling task (None outside
    a task); the worker-client module does this when it is imported."""
    global _task_client
    _task_client = find


class _DefaultScheduler:
    """dask's ``"conveyor"`` scheduler: whichever client is the default when it runs.

    dask calls ``get``; ``dask.persist`` calls ``persist`` on the object that ``get`` is
    bound to, so persisted collections stay on the cluster.
    """

    def get(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        return _synchronous(default_client()).get(dsk, keys, **kwargs)

    def persist(self, collections: Any, **kwargs: Any) -> Any:
        return _synchronous(default_client()).persist(collections, **kwargs)


def _synchronous(client: Client) -> Client:
    if client.asynchronous:
        raise RuntimeError(
            "the default conveyor client is asynchronous: use `await client.compute(x)` "
            "or `client.persist(x)` instead of dask.compute / x.compute()"
        )
    return client


NAME = "conveyor"
dask.base.named_schedulers[NAME] = _DefaultScheduler().get


def set_default(client: Client) -> None:
    """Make ``client`` the default, and dask's scheduler."""
    with _lock:
        _stack.append(client)
        _apply()


def unset_default(client: Client) -> None:
    """Forget ``client`` as a default (on close); the one before it takes over."""
    with _lock:
        if client not in _stack:
            return
        while client in _stack:
            _stack.remove(client)
        _apply()


@contextmanager
def as_current(client: Client) -> Iterator[Client]:
    """Make ``client`` the default inside the block, whatever was default before."""
    with _lock:
        _stack.append(client)
        _apply()
    try:
        yield client
    finally:
        with _lock:
            for i in range(len(_stack) - 1, -1, -1):  # the entry this block pushed
                if _stack[i] is client:
                    del _stack[i]
                    break
            _apply()


def default_client() -> Client:
    """The default client: inside a task, the worker's; else the most recent default
    client still open. ValueError if there is none."""
    if _task_client is not None:
        client = _task_client()
        if client is not None:
            return client
    with _lock:
        if not _stack:
            raise ValueError("No client found: start one with conveyor.Client()")
        return _stack[-1]


def _apply() -> None:
    """Point dask's config at the top of the stack, or restore what it was."""
    global _saved
    if _stack:
        if _saved is None:
            _saved = {k: dask.config.get(k, _UNSET) for k in _KEYS}
        settings: dict[str, Any] = {"scheduler": NAME}
        if _saved["dataframe.shuffle.method"] in (_UNSET, None):
            settings["dataframe.shuffle.method"] = "tasks"
        dask.config.set(settings)
        return
    if _saved is None:
        return
    saved, _saved = _saved, None
    for key in _KEYS:
        if saved[key] is _UNSET:
            _unset(key)
        else:
            dask.config.set({key: saved[key]})


def _unset(key: str) -> None:
    """Remove ``key`` (dotted) from dask's global config."""
    *path, last = key.split(".")
    node: Any = dask.config.config
    for part in path:
        node = node.get(part)
        if not isinstance(node, dict):
            return
    node.pop(last, None)
