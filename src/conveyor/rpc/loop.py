"""An asyncio event loop in a background thread, for synchronous callers.

A synchronous ``Client`` and a synchronous ``LocalCluster`` both need an event loop that
runs while the user's thread does other things. :class:`LoopRunner` owns one such loop in a
daemon thread. The process-wide instance is shared through reference counting::

    runner = LoopRunner.acquire()      # starts the thread on first use
    try:
        result = runner.run_sync(some_coroutine_function, arg, timeout=10)
    finally:
        runner.release()               # the last release stops and joins the thread

The loop is uvloop's when uvloop is installed (see :func:`new_event_loop`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

_uvloop_factory: Callable[[], asyncio.AbstractEventLoop] | None
try:
    import uvloop

    _uvloop_factory = uvloop.new_event_loop
except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
    _uvloop_factory = None

__all__ = ["LoopRunner", "new_event_loop"]

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """Return a new event loop: uvloop's if it is installed, else asyncio's default."""
    if _uvloop_factory is not None:
        return _uvloop_factory()
    return asyncio.new_event_loop()


class _Raised(Exception):
    """Carries a CancelledError subclass raised as an error out of a loop task."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


class LoopRunner:
    """One event loop running in a daemon thread, started on demand.

    Use :meth:`acquire` / :meth:`release` to share the process-wide runner, or create a
    private one and call :meth:`start` / :meth:`stop` (or use it as a context manager).
    """

    _shared: ClassVar[LoopRunner | None] = None
    _shared_users: ClassVar[int] = 0
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- sharing -------------------------------------------------------------------------

    @classmethod
    def acquire(cls) -> LoopRunner:
        """Return the process-wide runner, started, and count one more user of it."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            cls._shared.start()
            cls._shared_users += 1
            return cls._shared

    def release(self) -> None:
        """Count one user fewer of the shared runner; the last one stops its thread."""
        cls = type(self)
        with cls._shared_lock:
            if cls._shared is not self or cls._shared_users <= 0:
                raise RuntimeError("release() called on a LoopRunner that was not acquired")
            cls._shared_users -= 1
            if cls._shared_users > 0:
                return
            cls._shared = None
        self.stop()

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running event loop; raises ``RuntimeError`` if the runner is not started."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("LoopRunner is not started")
        return loop

    @property
    def is_running(self) -> bool:
        """Whether the loop thread is started and not yet stopped."""
        return self._loop is not None

    def in_loop_thread(self) -> bool:
        """Whether the calling thread is this runner's loop thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def start(self) -> None:
        """Start the loop thread if it is not running; return once the loop runs."""
        with self._lock:
            if self._loop is not None:
                return
            loop = new_event_loop()
            running = threading.Event()
            thread = threading.Thread(
                target=self._run, args=(loop, running), name="conveyor-loop", daemon=True
            )
            thread.start()
            running.wait()
            self._loop, self._thread = loop, thread

    def stop(self) -> None:
        """Stop the loop, cancel its remaining tasks and join the thread.

        Called from the loop thread itself, the loop stops once the current callback
        returns and the thread is not joined.
        """
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(loop.stop)
        if threading.current_thread() is not thread:
            thread.join()

    def __enter__(self) -> LoopRunner:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, running: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(running.set)
        try:
            loop.run_forever()
        finally:
            try:
                _cancel_all_tasks(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    # -- calling into the loop -----------------------------------------------------------

    def run_sync(
        self,
        async_fn: Callable[..., Awaitable[T]],
        *args: Any,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``async_fn(*args, **kwargs)`` on the loop and return its result.

        Blocks the calling thread until the coroutine finishes and re-raises its exception.
        After ``timeout`` seconds the coroutine is cancelled and ``TimeoutError`` raised.
        Must not be called from the loop's own thread (that would deadlock).
        """
        if self.in_loop_thread():
            raise RuntimeError(
                "run_sync() was called from the event loop's own thread; "
                "await the coroutine instead of running it synchronously"
            )

        async def call() -> T:
            try:
                result = async_fn(*args, **kwargs)
                if inspect.isawaitable(result):
                    return await result
                return result
            except asyncio.CancelledError as e:
                task = asyncio.current_task()
                if type(e) is asyncio.CancelledError or (task is not None and task.cancelling()):
                    raise  # really cancelled
                # an error that subclasses CancelledError (a cancelled future's): the
                # calling thread must see it, with its message, not a bare cancellation
                raise _Raised(e) from None

        future = asyncio.run_coroutine_threadsafe(call(), self.loop)
        try:
            return future.result(timeout)
        except _Raised as carried:
            raise carried.error from None
        except concurrent.futures.TimeoutError:
            if future.done():  # finished meanwhile, or raised TimeoutError itself
                return future.result()
            future.cancel()
            name = getattr(async_fn, "__qualname__", repr(async_fn))
            raise TimeoutError(f"{name} did not finish within {timeout} seconds") from None


def _forget_shared_runner_after_fork() -> None:
    """In a forked child the parent's loop thread does not exist: start afresh."""
    LoopRunner._shared = None
    LoopRunner._shared_users = 0
    LoopRunner._shared_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_shared_runner_after_fork)


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks left on a stopped loop and let them finish their clean-up."""
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
