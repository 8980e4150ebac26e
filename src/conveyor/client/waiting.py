"""Waiting on many futures: ``wait`` and ``as_completed``."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, NamedTuple

from dask.base import is_dask_collection

from conveyor import config
from conveyor.client.collections import futures_of
from conveyor.client.future import Future, FutureState, all_settled
from conveyor.client.secession import seceding_if_in_task

ALL_COMPLETED = "ALL_COMPLETED"
FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"


class DoneAndNotDoneFutures(NamedTuple):
    """What ``wait`` returns."""

    done: set[Future]
    not_done: set[Future]


def wait(
    fs: Any,
    timeout: float | str | None = None,
    return_when: str = ALL_COMPLETED,
) -> Any:
    """Wait until all (or the first, or the first failed) of ``fs`` are done.

    ``fs`` may also be (or hold) dask collections, whose futures are waited on:
    ``wait(x.persist())``. Returns ``(done, not_done)`` sets; raises TimeoutError after
    ``timeout``.
    """
    if isinstance(fs, Future):
        futures = [fs]
    elif is_dask_collection(fs):
        futures = futures_of(fs)  # never iterate a collection: an array yields slices
    else:
        futures = [f for x in fs for f in ([x] if isinstance(x, Future) else futures_of(x))]
    if return_when not in (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION):
        raise ValueError(f"unknown return_when {return_when!r}")
    if not futures:
        return DoneAndNotDoneFutures(set(), set())
    client = futures[0].client
    with seceding_if_in_task():  # waiting inside a task must not hold its thread
        return client.sync(_wait, futures, return_when, timeout=config.parse_duration(timeout))


async def _wait(futures: list[Future], return_when: str) -> DoneAndNotDoneFutures:
    states = {f.key: f._state for f in futures}
    if return_when == ALL_COMPLETED:
        await all_settled(states.values())
    else:
        trigger = asyncio.Event()
        pending = [st for st in states.values() if not st.done()]
        remaining = len(pending)

        def settled(st: FutureState) -> None:
            nonlocal remaining
            remaining -= 1
            if return_when == FIRST_COMPLETED or st.status != "finished" or not remaining:
                trigger.set()

        for st in pending:
            st.add_callback(lambda st=st: settled(st))  # type: ignore[misc]
        if len(pending) < len(states):
            settled_before = [st for st in states.values() if st.done()]
            if return_when == FIRST_COMPLETED or any(
                st.status != "finished" for st in settled_before
            ):
                trigger.set()
        if not pending:
            trigger.set()
        await trigger.wait()
    done = {f for f in futures if f.done()}
    return DoneAndNotDoneFutures(done, set(futures) - done)


class as_completed:
    """Iterate over futures in the order they finish.

    ``for fut in as_completed(futures): ...`` or ``async for``; ``with_results=True``
    yields ``(future, result)`` pairs. ``add(future)`` extends a running iteration.
    Completions arrive on the client's event loop, and ``async for`` waits without a
    thread: neither depends on a thread being free (done callbacks may block theirs).
    """

    def __init__(
        self,
        futures: Iterable[Future] = (),
        with_results: bool = False,
        raise_errors: bool = True,
    ) -> None:
        self.with_results = with_results
        self.raise_errors = raise_errors
        self._queue: queue.SimpleQueue[Future] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._outstanding = 0
        #: ``async for`` iterations waiting for the next future: their loops and wakers
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        for f in futures:
            self.add(f)

    def add(self, future: Future) -> None:
        """Also yield ``future`` once it is done."""
        with self._lock:
            self._outstanding += 1
        future.client._when_done(future, self._put)

    def _put(self, future: Future) -> None:
        """``future`` is done (on its client's loop): queue it, wake who waits."""
        self._queue.put(future)
        with self._lock:
            waiters, self._waiters = self._waiters, []
        if not waiters:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, wake in waiters:
            if loop is running:
                _wake(wake)
            else:
                with contextlib.suppress(RuntimeError):  # that loop is closed
                    loop.call_soon_threadsafe(_wake, wake)

    async def _next(self) -> Future:
        """The next done future, awaited on the running loop."""
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(queue.Empty):
                return self._queue.get_nowait()
            wake: asyncio.Future[None] = loop.create_future()
            with self._lock:
                if not self._queue.empty():
                    continue
                self._waiters.append((loop, wake))
            try:
                await wake
            finally:
                with self._lock, contextlib.suppress(ValueError):
                    self._waiters.remove((loop, wake))

    def update(self, futures: Iterable[Future]) -> None:
        """Add several futures."""
        for f in futures:
            self.add(f)

    def count(self) -> int:
        """Futures not yet yielded."""
        return self._outstanding

    def is_empty(self) -> bool:
        """Whether every added future has been yielded."""
        return self._outstanding == 0

    def _take(self, fut: Future) -> Any:
        with self._lock:
            self._outstanding -= 1
        if not self.with_results:
            return fut
        if fut.status != "finished":
            if self.raise_errors:
                raise fut._state.make_exception()
            return fut, fut._state.make_exception()
        return fut, fut.result()

    def __iter__(self) -> Iterator[Any]:
        while not self.is_empty():
            yield self._take(self._queue.get())

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Any]:
        while not self.is_empty():
            fut = await self._next()
            with self._lock:
                self._outstanding -= 1
            if self.with_results:
                yield (fut, await fut)
            else:
                yield fut

    def batches(self) -> Iterator[list[Any]]:
        """Yield lists of everything completed since the last batch."""
        while not self.is_empty():
            batch = [self._take(self._queue.get())]
            while True:
                try:
                    batch.append(self._take(self._queue.get_nowait()))
                except queue.Empty:
                    break
            yield batch


def _wake(wake: asyncio.Future[None]) -> None:
    if not wake.done():
        wake.set_result(None)
