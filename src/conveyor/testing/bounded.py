"""Scenarios bounded in time that fail with the scheduler's state when they hang.

::

    with bounded(client, 60, "sum after a worker loss") as deadline:
        assert future.result(timeout=deadline.remaining()) == expected
        deadline.until(lambda: len(client.scheduler_info()["workers"]) == 2, "a new worker")

    async with bounded(client, 30):          # an asynchronous client
        await future

The block fails with :class:`ScenarioTimeout` (an ``AssertionError``) whose message
holds the scheduler's ``dump-state`` summary (see
:mod:`conveyor.server.extensions.dump`: task counts per state, each worker's status and
what it runs, a sentence for a few unfinished tasks) when

* a call inside it raises ``TimeoutError`` (give blocking calls
  ``timeout=deadline.remaining()``);
* it is still running when the bound passes: a synchronous block running in the main
  thread is interrupted there (a signal, so that even a call blocked without a timeout
  returns), an asynchronous one is cancelled;
* it ends after the bound.

``keys`` (futures or keys) names the tasks the dump explains first.
"""

from __future__ import annotations

import asyncio
import pprint
import signal
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType
from typing import Any

from conveyor.client.client import Client

__all__ = ["Deadline", "ScenarioTimeout", "bounded", "scheduler_dump"]

#: seconds a dump request may take (the scheduler may be the thing that hangs)
DUMP_TIMEOUT = 10.0
#: the signal that interrupts a synchronous block in the main thread
_SIGNAL = signal.SIGUSR1


class ScenarioTimeout(AssertionError):
    """A bounded scenario did not finish in time; the message holds the scheduler dump."""


class Deadline:
    """The end of a bounded scenario, on the monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()
        self.end = self.start + seconds

    def remaining(self) -> float:
        """Seconds left (at least a millisecond, so it is always a valid timeout)."""
        return max(0.001, self.end - time.monotonic())

    def elapsed(self) -> float:
        """Seconds since the scenario began."""
        return time.monotonic() - self.start

    def until(self, predicate: Callable[[], bool], what: str = "", interval: float = 0.05) -> None:
        """Poll ``predicate`` (synchronous code) until it holds; TimeoutError at the end."""
        while not predicate():
            if time.monotonic() > self.end:
                raise TimeoutError(f"condition not met in time: {what or predicate}")
            time.sleep(interval)


def _key_list(keys: Iterable[Any] | None) -> list[Any] | None:
    if keys is None:
        return None
    return [getattr(k, "key", k) for k in keys]


async def _dump(client: Client, keys: list[Any] | None) -> Any:
    if client.scheduler is None:
        raise RuntimeError("the client is not connected")
    msg: dict[str, Any] = {"op": "dump-state"}
    if keys is not None:
        msg["keys"] = keys
    return await client.scheduler.request(msg)


def scheduler_dump(client: Client, keys: Iterable[Any] | None = None) -> Any:
    """The scheduler's ``dump-state`` summary (awaitable for an asynchronous client),
    bounded by :data:`DUMP_TIMEOUT`."""
    return client.sync(_dump, client, _key_list(keys), timeout=DUMP_TIMEOUT)


def _format(what: str, seconds: float, dump: object) -> str:
    text = dump if isinstance(dump, str) else pprint.pformat(dump, width=100, sort_dicts=False)
    return f"{what or 'scenario'} did not finish within {seconds:g} s; scheduler state:\n{text}"


class bounded:  # lower case: used like a function, ``with bounded(client, 60):``
    """Bound a scenario to ``seconds``; on a hang, fail with a dump of the scheduler."""

    def __init__(
        self,
        client: Client,
        seconds: float,
        what: str = "",
        keys: Iterable[Any] | None = None,
    ) -> None:
        self.client = client
        self.seconds = seconds
        self.what = what
        self.keys = _key_list(keys)
        self.deadline = Deadline(seconds)
        self.message: str | None = None
        self._lock = threading.Lock()
        self._open = False
        self._timer: threading.Timer | None = None
        self._previous: Any = None
        self._main: int | None = None
        self._scope: asyncio.Timeout | None = None

    # ------------------------------------------------------------------ synchronous

    def __enter__(self) -> Deadline:
        if self.client.asynchronous:
            raise TypeError("use 'async with bounded(...)' with an asynchronous client")
        self.deadline = Deadline(self.seconds)
        self._open = True
        if threading.current_thread() is threading.main_thread():
            self._main = threading.get_ident()
            self._previous = signal.signal(_SIGNAL, self._interrupted)
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.name = "conveyor-bounded"
        self._timer.start()
        return self.deadline

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            self._open = False  # the watchdog sends no signal from now on
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            timer.join()
        if self._main is not None:
            signal.signal(_SIGNAL, self._previous)
            self._main = None
        if isinstance(exc, ScenarioTimeout):
            return
        if isinstance(exc, TimeoutError) or (
            exc is None and self.deadline.elapsed() > self.seconds
        ):
            raise ScenarioTimeout(self._message_sync()) from exc

    def _late(self) -> bool:
        return self.deadline.elapsed() > self.seconds

    def _expire(self) -> None:
        """In the watchdog thread, when the bound passes: take the dump, then interrupt
        the main thread (which raises ScenarioTimeout there)."""
        self._message_sync()
        with self._lock:
            if self._open and self._main is not None:
                signal.pthread_kill(self._main, _SIGNAL)

    def _interrupted(self, signum: int, frame: FrameType | None) -> None:
        raise ScenarioTimeout(self.message or _format(self.what, self.seconds, "(no dump)"))

    def _message_sync(self) -> str:
        with self._lock:
            if self.message is not None:
                return self.message
        try:
            dump = scheduler_dump(self.client, self.keys)
        except BaseException as e:  # the scheduler may be what hangs
            dump = f"(no dump: {type(e).__name__}: {e})"
        message = _format(self.what, self.seconds, dump)
        with self._lock:
            if self.message is None:
                self.message = message
            return self.message

    # ----------------------------------------------------------------- asynchronous

    async def __aenter__(self) -> Deadline:
        self.deadline = Deadline(self.seconds)
        self._scope = asyncio.timeout(self.seconds)
        await self._scope.__aenter__()
        return self.deadline

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._scope is not None
        try:
            await self._scope.__aexit__(exc_type, exc, tb)
        except TimeoutError as e:  # the scope cancelled the block at the bound
            raise ScenarioTimeout(await self._message_async()) from e
        if isinstance(exc, TimeoutError) or (
            exc is None and self.deadline.elapsed() > self.seconds
        ):
            raise ScenarioTimeout(await self._message_async()) from exc

    async def _message_async(self) -> str:
        try:
            dump = await scheduler_dump(self.client, self.keys)
        except Exception as e:
            dump = f"(no dump: {type(e).__name__}: {e})"
        return _format(self.what, self.seconds, dump)
