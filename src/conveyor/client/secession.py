"""Secession: a task leaving its worker's thread budget while it waits on other tasks.

A task that submits more work and waits for it must not hold one of its worker's
threads while it waits: on a one-thread worker, the work it waits for could never run.
``secede()`` takes the calling task out of its worker's thread budget (the worker starts
another thread, and tells the scheduler the task is long-running); ``rejoin()`` waits
for a free slot and takes the task back in. A client used from inside a task secedes
by itself around every blocking call (``Client.sync``), so waiting on futures in a task
never deadlocks a worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from conveyor.rpc.context import TaskContext, current_task


def task_context(what: str) -> TaskContext:
    """The calling task's context; ValueError naming ``what`` outside a task."""
    ctx = current_task()
    if ctx is None or ctx.key is None:
        raise ValueError(f"{what}() works only inside a task running on a worker")
    return ctx


def secede() -> None:
    """Take the calling task out of its worker's thread budget while it waits on other
    tasks: the worker may start another task in its place. Idempotent."""
    ctx = task_context("secede")
    if ctx.seceded:
        return
    ctx.seceded = True
    ctx.worker.secede_task(ctx.key)


def rejoin() -> None:
    """Bring a seceded task back into its worker's thread budget, waiting until a thread
    is free. Does nothing for a task that did not secede."""
    ctx = task_context("rejoin")
    if not ctx.seceded:
        return
    ctx.worker.rejoin_task(ctx.key)
    ctx.seceded = False


def seceding_if_in_task() -> Any:
    """A context manager for blocking calls: inside a task that has not seceded, it
    secedes for the call and rejoins after; elsewhere it does nothing."""
    ctx = current_task()
    if ctx is None or ctx.key is None or ctx.seceded:
        return _NOTHING
    return _seceded_call(ctx)


@contextmanager
def _seceded_call(ctx: TaskContext) -> Iterator[None]:
    secede()
    try:
        yield
    finally:
        rejoin()


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NOTHING = _Nothing()
