"""Futures: handles on remote results, reference-counted by their client."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import Callable, Generator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from dask._task_spec import TaskRef

from conveyor.client.current import default_client
from conveyor.client.reprs import future_html
from conveyor.client.secession import seceding_if_in_task
from conveyor.protocol import unpack_traceback, unpickle_bytes

if TYPE_CHECKING:
    from conveyor.client.client import Client

logger = logging.getLogger("conveyor.client")


class KilledWorker(Exception):
    """Every worker that tried to run this task died while running it."""


class CancelledError(asyncio.CancelledError):
    """The future was cancelled, or its result can no longer be had."""


class _Failure:
    """Why a key failed: the pickled exception and traceback, and their text."""

    __slots__ = ("exception", "text", "traceback", "traceback_text")

    def __init__(self, exception: Any, traceback: Any, text: str, traceback_text: str) -> None:
        self.exception = exception
        self.traceback = traceback
        self.text = text
        self.traceback_text = traceback_text


_NO_FAILURE = _Failure(None, None, "", "")


class FutureState:
    """The client's view of one key, shared by every Future for it.

    Mutated only on the client's event loop. A ``map`` makes one per task, so fields
    start as shared constants and are set when something happens.
    """

    __slots__ = ("_callbacks", "_event", "failure", "inline", "key", "status", "type", "workers")

    def __init__(self, key: Any) -> None:
        self.key = key
        #: pending, finished, error, lost or cancelled
        self.status = "pending"
        self.type: str | None = None
        self.workers: tuple[str, ...] = ()
        #: the serialized result, when the worker sent it along (small results)
        self.inline: Any = None
        self.failure = _NO_FAILURE
        self._event: asyncio.Event | None = None
        self._callbacks: list[Callable[[], None]] | None = None

    @property
    def event(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
            if self.status != "pending":
                self._event.set()
        return self._event

    def done(self) -> bool:
        return self.status != "pending"

    async def wait(self) -> None:
        if self.status == "pending":
            await self.event.wait()

    @property
    def callbacks(self) -> list[Callable[[], None]]:
        """The callbacks waiting for this key to settle (a copy)."""
        return list(self._callbacks or ())

    def add_callback(self, cb: Callable[[], None]) -> None:
        """Call ``cb()`` (on the loop) the next time this key settles."""
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(cb)

    def remove_callback(self, cb: Callable[[], None]) -> None:
        """Forget ``cb`` if it is still waiting."""
        if self._callbacks is not None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(cb)

    def _settle(self, status: str) -> None:
        self.status = status
        if self._event is not None:
            self._event.set()
        callbacks, self._callbacks = self._callbacks, None
        for cb in callbacks or ():
            cb()

    def finish(self, type: str | None, workers: Iterable[str], inline: Any = None) -> None:
        self.type = type
        self.workers = tuple(workers)
        self.inline = inline
        self._settle("finished")

    def set_error(self, exception: Any, traceback: Any, text: str, tb_text: str) -> None:
        self.failure = _Failure(exception, traceback, text, tb_text)
        self._settle("error")

    def lose(self) -> None:
        """The result was lost and is being recomputed."""
        self.status = "pending"
        self.workers = ()
        self.inline = None
        if self._event is not None:
            self._event.clear()

    def cancel(self, reason: str = "") -> None:
        self.failure = _Failure(None, None, reason, "")
        self._settle("cancelled")

    def make_exception(self) -> BaseException:
        """The exception the task raised, with its remote traceback attached."""
        failure = self.failure
        if self.status == "cancelled":
            return CancelledError(failure.text or f"{self.key!r} was cancelled")
        exc: BaseException
        if failure.exception is None:
            name, _, message = failure.text.partition(": ")
            builtin = getattr(builtins, name, None)
            if name == "KilledWorker":
                exc = KilledWorker(message)
            elif isinstance(builtin, type) and issubclass(builtin, Exception):
                exc = builtin(message)  # TypeError: a message that could not be encoded
            else:
                exc = RuntimeError(failure.text)
            return exc
        try:
            loaded = unpickle_bytes(failure.exception)
            exc = loaded if isinstance(loaded, BaseException) else RuntimeError(repr(loaded))
        except Exception as e:
            exc = RuntimeError(f"{failure.text} (could not unpickle it here: {e})")
        tb = unpack_traceback(failure.traceback)
        return exc.with_traceback(tb) if tb is not None else exc

    def make_traceback(self) -> TracebackType | None:
        return unpack_traceback(self.failure.traceback)


async def all_settled(states: Iterable[FutureState]) -> None:
    """Wait until every state is done: one event and a count, not a waiter per state."""
    pending = [st for st in states if not st.done()]
    if not pending:
        return
    remaining = len(pending)
    finished = asyncio.Event()

    def settled() -> None:
        nonlocal remaining
        remaining -= 1
        if not remaining:
            finished.set()

    for st in pending:
        st.add_callback(settled)
    try:
        await finished.wait()
    finally:
        if remaining:  # given up on (timeout, cancel): leave no callbacks behind
            for st in pending:
                st.remove_callback(settled)


class Future(TaskRef):
    """A remote computation's result, identified by ``key``.

    Keeps the result alive on the cluster while any Future for its key exists.
    """

    __slots__ = ("__weakref__", "_client", "_state")
    _client: Client
    _state: FutureState

    def __init__(self, key: Any, client: Client | None = None) -> None:
        if client is None:
            client = default_client()
        self.key = key
        self._client = client
        self._state = client._inc_ref(key)

    def __getattr__(self, name: str) -> Any:
        # Reached only for a slot never set: a future unpickled in this process (inside
        # a graph sent to a worker, or a result holding futures) binds to the default
        # client on first use, not when it is unpickled: a worker unpickling a graph
        # that mentions futures must not open a client for them.
        if name in ("_client", "_state"):
            client = default_client()
            self._client = client
            self._state = client._adopt(self.key)
            return object.__getattribute__(self, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _is_bound(self) -> bool:
        try:
            _STATE_SLOT.__get__(self, Future)
        except AttributeError:
            return False
        return True

    def __del__(self) -> None:
        if not self._is_bound():
            return
        with contextlib.suppress(Exception):  # interpreter shutdown, client gone
            self._client._dec_ref(self.key)

    def __reduce__(self) -> Any:
        return _unpickle_future, (self.key,)

    def __repr__(self) -> str:
        extra = f", type: {self._state.type}" if self._state.type else ""
        return f"<Future: {self.status}{extra}, key: {self.key}>"

    def _repr_html_(self) -> str:
        """Jupyter's view: key, status and result type (when known), escaped."""
        return future_html(self)

    def __dask_tokenize__(self) -> Any:
        return (type(self).__name__, self.key)

    @property
    def client(self) -> Client:
        """The client this future belongs to."""
        return self._client

    @property
    def status(self) -> str:
        """pending, finished, error, lost or cancelled."""
        return self._state.status

    def done(self) -> bool:
        """Whether the computation finished, failed or was cancelled."""
        return self._state.done()

    def cancelled(self) -> bool:
        """Whether the future was cancelled."""
        return self._state.status == "cancelled"

    def result(self, timeout: float | str | None = None) -> Any:
        """Wait for and return the result; raise the task's exception if it failed."""
        with seceding_if_in_task():  # waiting inside a task must not hold its thread
            return self._client.sync(self._client._gather_one, self, timeout=timeout)

    def exception(self, timeout: float | str | None = None) -> BaseException | None:
        """The exception the task raised, or None if it succeeded."""
        return self._client.sync(self._exception, timeout=timeout)  # type: ignore[no-any-return]

    async def _exception(self) -> BaseException | None:
        await self._state.wait()
        if self._state.status in ("error", "cancelled"):
            return self._state.make_exception()
        return None

    def traceback(self, timeout: float | str | None = None) -> TracebackType | None:
        """The remote traceback of a failed task, or None."""
        return self._client.sync(self._traceback, timeout=timeout)  # type: ignore[no-any-return]

    async def _traceback(self) -> TracebackType | None:
        await self._state.wait()
        return self._state.make_traceback() if self._state.status == "error" else None

    def add_done_callback(self, fn: Callable[[Future], Any]) -> None:
        """Call ``fn(future)`` (in a thread) once the future is done."""
        self._client._add_done_callback(self, fn)

    def cancel(self, force: bool = False) -> Any:
        """Cancel this future's computation."""
        return self._client.cancel([self], force=force)

    def release(self) -> None:
        """Drop this handle now instead of waiting for garbage collection."""
        if self._is_bound():
            self._client._dec_ref(self.key)
            del self._state

    def __await__(self) -> Generator[Any, None, Any]:
        return self._client._gather_one(self).__await__()


#: the slot descriptor of ``Future._state``: reading through it never binds
_STATE_SLOT: Any = Future.__dict__["_state"]


def _unpickle_future(key: Any) -> Future:
    """A future unpickled here: bound to a client on first use (see ``__getattr__``)."""
    fut = Future.__new__(Future)
    fut.key = key
    return fut
