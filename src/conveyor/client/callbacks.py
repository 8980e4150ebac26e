"""Done callbacks, on threads of the client's own (:class:`CallbacksMixin`, one of
``Client``'s bases).

``Future.add_done_callback(fn)`` calls ``fn(future)`` on a thread once the future is
done. Those threads belong to the client: at most :data:`MAX_THREADS`, started as
callbacks come and named ``conveyor-callback-<n>``. Not asyncio's default executor, so a
callback that blocks holds one of them and nothing else: ``as_completed`` and ``wait``
hear of completions on the event loop, and other users of the default executor keep
it. The threads stop when the client closes, once the callbacks queued before then have
run (the close waits for them at most :data:`STOP_TIMEOUT` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from conveyor.client.future import Future
    from conveyor.client.shape import ClientShape

    class _CallbacksClient(ClientShape, Protocol):
        _done_callbacks: CallbackThreads | None

        def _in_loop_thread(self) -> bool: ...

        def _when_done(self, fut: Future, fn: Callable[[Future], Any]) -> None: ...


logger = logging.getLogger("conveyor.client")

#: threads a client runs done callbacks on, at most
MAX_THREADS = 4
#: how long closing a client waits for its running callbacks to return
STOP_TIMEOUT = 5.0

_Call = tuple[Callable[["Future"], Any], "Future"]


class CallbackThreads:
    """Runs ``fn(future)`` calls in order of submission on up to ``max_threads``
    threads, started when every running one is busy."""

    def __init__(self, name: str = "conveyor-callback", max_threads: int = MAX_THREADS) -> None:
        self._name = name
        self._max = max_threads
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._waiting = 0  # calls queued and not yet taken by a thread
        self._idle = 0  # threads waiting for a call
        self._live = 0  # threads not yet finished
        self._stopped = False
        self._all_finished: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def submit(self, fn: Callable[[Future], Any], fut: Future) -> None:
        """Call ``fn(fut)`` on one of the threads; dropped once stopped."""
        thread = None
        with self._lock:
            if self._stopped:
                logger.debug("Not calling %r for %r: the client is closed", fn, fut)
                return
            self._waiting += 1
            if self._waiting > self._idle and len(self._threads) < self._max:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                self._live += 1
        self._queue.put((fn, fut))
        if thread is not None:
            thread.start()

    def _work(self) -> None:
        try:
            while True:
                with self._lock:
                    self._idle += 1
                call = self._queue.get()
                with self._lock:
                    self._idle -= 1
                    if call is None:
                        return
                    self._waiting -= 1
                fn, fut = call
                del call  # an idle thread keeps no future alive
                try:
                    fn(fut)
                except Exception:
                    logger.exception("Error in the done-callback %r of %r", fn, fut)
                del fn, fut
        finally:
            with self._lock:
                self._live -= 1
                finished = self._all_finished if self._live == 0 else None
            if finished is not None:
                loop, signal = finished
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(_set_done, signal)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Take no more calls; wait (without blocking the loop) until the threads have
        run what was queued and finished, at most ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        signal: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._stopped = True
            threads = list(self._threads)
            if self._live == 0:
                signal.set_result(None)
            self._all_finished = (loop, signal)
        for _ in threads:
            self._queue.put(None)
        try:
            await asyncio.wait_for(signal, timeout)
        except TimeoutError:
            busy = sum(t.is_alive() for t in threads)
            logger.warning(
                "%d done-callback thread(s) still busy %.1f s after their client closed; "
                "left to finish on their own",
                busy,
                timeout,
            )
            return
        for t in threads:
            t.join(timeout=1.0)  # each has left its loop: this is its last instant


def _set_done(signal: asyncio.Future[None]) -> None:
    if not signal.done():
        signal.set_result(None)


class CallbacksMixin:
    """``Client`` methods that call code when futures are done."""

    #: made on the loop when the first done callback is due
    _done_callbacks: CallbackThreads | None = None

    def _when_done(self: _CallbacksClient, fut: Future, fn: Callable[[Future], Any]) -> None:
        """Call ``fn(fut)`` on the event loop once ``fut`` is done (at once if it is
        done already); ``fn`` must not block. Callable from any thread."""

        def register() -> None:
            st = fut._state
            if st.done():
                fn(fut)
            else:
                st.add_callback(lambda: fn(fut))

        if self.asynchronous or self._in_loop_thread():
            register()
        else:
            assert self.loop is not None
            self.loop.call_soon_threadsafe(register)

    def _add_done_callback(
        self: _CallbacksClient, fut: Future, fn: Callable[[Future], Any]
    ) -> None:
        """Call ``fn(fut)`` on one of the client's callback threads once ``fut`` is
        done (see the module's description)."""

        def run(f: Future) -> None:  # on the loop
            threads = self._done_callbacks
            if threads is None:
                threads = self._done_callbacks = CallbackThreads()
            threads.submit(fn, f)

        self._when_done(fut, run)

    async def _stop_callbacks(self: _CallbacksClient) -> None:
        """Let the callbacks queued so far run, then stop their threads (on close)."""
        threads = self._done_callbacks
        if threads is None:  # none came: one stopped already refuses any that come late
            threads = self._done_callbacks = CallbackThreads()
        await threads.stop()
