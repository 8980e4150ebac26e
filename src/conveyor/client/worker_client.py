"""Clients inside tasks: ``get_client`` and ``worker_client``.

``worker_client()`` gives a task its worker's client with the task seceded for the
block (see :mod:`conveyor.client.secession`).

Each worker has one client for its tasks, connected to its scheduler, made on first
use and closed with the worker.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from conveyor.client import current
from conveyor.client.client import Client
from conveyor.client.secession import rejoin, secede, task_context
from conveyor.rpc.context import TaskContext, current_task

_lock = threading.Lock()


def get_client(timeout: float | str | None = None) -> Client:
    """The client to use here: inside a task, its worker's client (made on first use);
    elsewhere, the default client. ValueError if there is none."""
    ctx = current_task()
    if ctx is not None and ctx.key is not None:
        return _worker_client(ctx, timeout)
    return current.default_client()


def _worker_client(ctx: TaskContext, timeout: float | str | None = None) -> Client:
    from_worker = ctx.worker
    with _lock:
        client: Client | None = getattr(from_worker, "client", None)
        if client is not None and client.status == "running":
            return client
        client = Client(
            from_worker.scheduler_address,
            set_as_default=False,
            timeout=timeout,
            name=f"worker-{from_worker.name}",
        )
        from_worker.client = client
        return client


def _task_client() -> Client | None:
    """The default client as seen from inside a task: its worker's."""
    ctx = current_task()
    if ctx is None or ctx.key is None:
        return None
    return _worker_client(ctx)


current.register_task_client(_task_client)


@contextmanager
def worker_client(timeout: float | str | None = None) -> Iterator[Client]:
    """Inside a task: ``with worker_client() as client:`` gives the worker's client with
    the task seceded for the block (it rejoins after), so it may submit work and wait
    on it without holding a thread."""
    ctx = task_context("worker_client")
    client = _worker_client(ctx, timeout)
    was_seceded = ctx.seceded
    secede()
    try:
        yield client
    finally:
        if not was_seceded:
            rejoin()
