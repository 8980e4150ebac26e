"""An in-process cluster for tests: scheduler, workers and an asynchronous client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from conveyor.client.client import Client
from conveyor.server.scheduler import Scheduler
from conveyor.server.worker import Worker


@asynccontextmanager
async def in_process_cluster(
    n_workers: int = 2,
    nthreads: int = 1,
    protocol: str = "tcp",
    scheduler_kwargs: dict[str, Any] | None = None,
    worker_kwargs: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[Scheduler, list[Worker], Client]]:
    """Start a scheduler, ``n_workers`` workers and a client on the running loop.

    Servers bind 127.0.0.1 (or use ``inproc://``); everything is closed on exit. The
    scheduler serves no dashboard unless ``scheduler_kwargs`` asks for one.
    """
    host = None if protocol == "inproc" else "127.0.0.1"
    # no dashboard unless asked for: most tests do not look at it, and it takes a port
    scheduler_kwargs = {"dashboard": False, **(scheduler_kwargs or {})}
    async with AsyncExitStack() as stack:
        s = await stack.enter_async_context(
            Scheduler(host=host, port=0, protocol=protocol, **scheduler_kwargs)
        )
        workers = []
        for i in range(n_workers):
            w = Worker(s.address, nthreads=nthreads, name=f"w{i}", **(worker_kwargs or {}))
            workers.append(await stack.enter_async_context(w))
        client = await stack.enter_async_context(
            Client(s.address, asynchronous=True, set_as_default=False)
        )
        yield s, workers, client


async def until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Wait for a condition that no event announces (polls every 5 ms, bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s: {what or predicate}")
        await asyncio.sleep(0.005)


def until_sync(
    predicate: Callable[[], bool], timeout: float = 5.0, what: str = "", interval: float = 0.05
) -> None:
    """:func:`until` for synchronous code (tests driving real processes): polls every
    ``interval`` seconds, bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s: {what or predicate}")
        time.sleep(interval)
