"""A thread that ends when its work does, for a rare blocking call made from the loop.

``loop.run_in_executor(None, ...)`` (and ``asyncio.to_thread``) use the loop's default
executor, whose threads, once started, stay idle until the loop closes. The process-wide
loop of :class:`conveyor.rpc.loop.LoopRunner` lives as long as any synchronous client or
cluster does, so those threads outlive the client or worker that needed them.
:func:`run_in_thread` runs one blocking call (reading a scheduler file, warm imports,
closing a client or a cluster) on a thread of its own, which ends with the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["run_in_thread"]

T = TypeVar("T")


async def run_in_thread(fn: Callable[..., T], *args: Any, name: str = "conveyor-call") -> T:
    """``fn(*args)`` on a new daemon thread, awaited; the thread ends when ``fn`` returns.

    For rare blocking calls only (each costs a thread start). If the awaiting task is
    cancelled, the call still runs to its end and its outcome is dropped.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def call() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as e:
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits for it
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=call, name=name, daemon=True).start()
    return await done
