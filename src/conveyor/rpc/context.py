"""Which task the calling thread is running, and on which worker.

A worker's task threads set this around each task, so that code inside a task can find
its worker (``get_worker``), the worker's client (``get_client``) and its own key
(``secede``/``rejoin``). It lives below both the servers and the client, which each
read it, and holds the worker as an opaque object.
"""

from __future__ import annotations

import threading
from typing import Any

_local = threading.local()


class TaskContext:
    """The task a thread runs: its worker, its key, and whether it left the worker's
    thread budget (``secede``)."""

    __slots__ = ("key", "seceded", "worker")

    def __init__(self, worker: Any, key: Any) -> None:
        self.worker = worker
        self.key = key
        self.seceded = False

    def __repr__(self) -> str:
        return f"<TaskContext {self.key!r} seceded={self.seceded}>"


def current_task() -> TaskContext | None:
    """The task the calling thread is running, or None outside a task."""
    ctx: TaskContext | None = getattr(_local, "task", None)
    return ctx


def set_current_task(ctx: TaskContext | None) -> None:
    """Enter (``ctx``) or leave (None) a task on the calling thread."""
    _local.task = ctx
