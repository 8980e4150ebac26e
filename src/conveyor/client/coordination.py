"""Coordination primitives shared between clients through the scheduler: ``Lock``,
``Semaphore``, ``Event``, ``Variable`` and ``Queue``, as in dask.distributed.

Each one is only a name and a client: the state lives on the scheduler
(``conveyor.server.extensions.coordination``), so objects with the same name in different
clients, threads or tasks are the same primitive, and each pickles as its name. A
blocking call is one request that the scheduler answers when it can go on; ``timeout``
is measured there. Values stored in a Variable or Queue are pickled here and travel as
opaque bytes; a Future is stored as its key, and the scheduler keeps its result alive
while the Variable or Queue holds it.

With an asynchronous client every method returns an awaitable (``await lock.acquire()``,
``async with lock:``); with a synchronous one it blocks (``with lock:``).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import uuid
from collections import deque
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from conveyor import config
from conveyor.client import current
from conveyor.client.future import Future
from conveyor.protocol import Serialized, dumps, loads
from conveyor.rpc import Msg, RemoteError

if TYPE_CHECKING:
    from collections.abc import Callable, Generator

    from conveyor.client.client import Client


class _Primitive:
    """A named primitive bound to a client (the default client unless one is given)."""

    _prefix = "primitive"

    def __init__(self, name: Hashable | None = None, client: Client | None = None) -> None:
        if name is None:
            name = f"{self._prefix}-{uuid.uuid4().hex}"
        elif isinstance(name, list):
            name = tuple(name)
        hash(name)
        #: the name every client and the scheduler know this primitive by
        self.name: Hashable = name
        self._client = client

    @property
    def client(self) -> Client:
        """The client this primitive talks through (found when first needed)."""
        if self._client is None:
            self._client = current.default_client()
        return self._client

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.name!r}>"

    def _sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.client.sync(fn, *args)

    async def _request(self, op: str, **fields: Any) -> Any:
        """Ask the scheduler, after everything this client sent before."""
        client = self.client
        if client.scheduler is None or client.status != "running":
            raise RuntimeError(f"{self!r}: the client is not running")
        client._drain_outbox()  # e.g. the submission of a future about to be stored
        try:
            return await client.scheduler.request({"op": op, "name": self.name, **fields})
        except RemoteError as e:
            raise _local_error(e) from None

    async def _blocking(self, op: str, **fields: Any) -> Any:
        """A request the scheduler may hold; withdrawn there if cancelled here."""
        token = uuid.uuid4().hex
        try:
            return await self._request(op, token=token, **fields)
        except asyncio.CancelledError:
            self._post("coordination-cancel", token=token)
            raise

    def _post(self, op: str, **fields: Any) -> None:
        """Send without waiting for an answer (in order with everything else)."""
        with contextlib.suppress(RuntimeError):  # the client is closed
            self.client._send({"op": op, "name": self.name, **fields})

    def _check_mode(self, asynchronous: bool) -> None:
        client = self.client
        if client.asynchronous != asynchronous and not client._in_loop_thread():
            how = "async with" if client.asynchronous else "with"
            raise TypeError(f"use '{how} {type(self).__name__.lower()}' with this client")

    def __await__(self) -> Generator[Any, None, Any]:
        """``await Lock(...)`` and friends give the object itself (nothing to wait for)."""

        async def itself() -> Any:
            return self

        return itself().__await__()


class Semaphore(_Primitive):
    """At most ``max_leases`` holders at once, across every client with this ``name``.

    ``acquire(timeout=None)`` returns True once a lease is held, or False if ``timeout``
    seconds pass first; ``release()`` gives back the oldest lease this object holds.
    Leases held by a client that disconnects are released on the scheduler, and the
    next waiter (first come, first served) gets them. Use ``with sem:`` (or ``async with``).
    """

    _prefix = "semaphore"

    def __init__(
        self, max_leases: int = 1, name: Hashable | None = None, client: Client | None = None
    ) -> None:
        if isinstance(max_leases, bool) or not isinstance(max_leases, int) or max_leases < 1:
            raise ValueError(f"max_leases must be a positive integer, not {max_leases!r}")
        super().__init__(name, client)
        self.max_leases = max_leases
        self._leases: deque[str] = deque()

    def acquire(self, timeout: float | str | None = None) -> Any:
        """Take a lease, waiting at most ``timeout`` seconds; True if taken, else False."""
        return self._sync(self._acquire, config.parse_duration(timeout))

    async def _acquire(self, timeout: float | None) -> bool:
        lease = uuid.uuid4().hex
        try:
            ok = await self._request(
                "semaphore-acquire", max_leases=self.max_leases, lease_id=lease, timeout=timeout
            )
        except asyncio.CancelledError:  # given up here: the lease, or the wait, goes too
            self._post("semaphore-release", lease_id=lease)
            raise
        if ok:
            self._leases.append(lease)
        return bool(ok)

    def release(self) -> Any:
        """Give back the oldest lease held; True if the scheduler had it.

        RuntimeError if this object holds no lease.
        """
        if not self._leases:
            raise RuntimeError("Released too often")
        return self._sync(self._release, self._leases.popleft())

    async def _release(self, lease: str) -> bool:
        return bool(await self._request("semaphore-release", lease_id=lease))

    def get_value(self) -> Any:
        """How many leases are held now, by anyone."""
        return self._sync(self._request, "semaphore-value")

    def close(self) -> Any:
        """Forget the semaphore on the scheduler: leases vanish, waiting acquires fail."""
        self._leases.clear()
        return self._sync(self._request, "semaphore-close")

    def __enter__(self) -> Semaphore:
        self._check_mode(asynchronous=False)
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> Semaphore:
        self._check_mode(asynchronous=True)
        await self._acquire(None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self._leases:
            raise RuntimeError("Released too often")
        await self._release(self._leases.popleft())

    def __reduce__(self) -> Any:
        return type(self), (self.max_leases, self.name)


class Lock(Semaphore):
    """A lock shared by every client using this ``name``: a Semaphore of one lease.

    ``acquire(blocking=True, timeout=None)`` returns True once held, False if
    ``timeout`` passes (or at once, with ``blocking=False``). A lock held by a client that
    disconnects is released. Use ``with lock:`` (or ``async with lock:``).
    """

    _prefix = "lock"

    def __init__(self, name: Hashable | None = None, client: Client | None = None) -> None:
        super().__init__(1, name, client)

    def acquire(  # type: ignore[override]  # distributed's signature
        self, blocking: bool = True, timeout: float | str | None = None
    ) -> Any:
        """Take the lock; True if taken, False if ``timeout`` passed (or, not blocking,
        if someone else holds it)."""
        if not blocking:
            if timeout is not None:
                raise ValueError("can't specify a timeout for a non-blocking call")
            timeout = 0
        return super().acquire(timeout)

    def locked(self) -> Any:
        """Whether anyone holds the lock."""
        return self._sync(self._locked)

    async def _locked(self) -> bool:
        return bool(await self._request("semaphore-value"))

    def __reduce__(self) -> Any:
        return type(self), (self.name,)


class Event(_Primitive):
    """A flag shared by every client using this ``name``, false at first.

    ``wait(timeout=None)`` returns True once the flag is set, False if ``timeout``
    passes first; ``set()`` wakes every waiter, ``clear()`` lowers the flag again.
    """

    _prefix = "event"

    def wait(self, timeout: float | str | None = None) -> Any:
        """Wait until the flag is set; True, or False if ``timeout`` passed first."""
        return self._sync(self._wait, config.parse_duration(timeout))

    async def _wait(self, timeout: float | None) -> bool:
        return bool(await self._blocking("event-wait", timeout=timeout))

    def set(self) -> Any:
        """Set the flag: every waiter wakes, and later waits return at once."""
        return self._sync(self._request, "event-set")

    def clear(self) -> Any:
        """Clear the flag: later waits block until it is set again."""
        return self._sync(self._request, "event-clear")

    def is_set(self) -> Any:
        """Whether the flag is set."""
        return self._sync(self._is_set)

    async def _is_set(self) -> bool:
        return bool(await self._request("event-is-set"))

    def __reduce__(self) -> Any:
        return type(self), (self.name,)


class Variable(_Primitive):
    """One value shared by every client using this ``name``.

    ``set(value)`` stores any picklable value, or a Future, whose result the scheduler
    then keeps while the variable holds it; ``get(timeout=None)`` returns the value
    (a Future for a future), waiting until there is one (``TimeoutError`` after
    ``timeout`` seconds); ``delete()`` forgets it. Only a Future given directly is held:
    futures inside other values are pickled as plain references.
    """

    _prefix = "variable"

    def set(self, value: Any, timeout: float | str | None = "30 s") -> Any:
        """Store ``value``; the previous value is dropped. Raises ``TimeoutError`` if the
        scheduler has not stored it within ``timeout`` seconds (None: no limit).

        A future's key needs no wait to reach the scheduler (messages keep their order),
        so a future the scheduler does not know (cancelled, released) fails at once with
        ValueError.
        """
        seconds = config.parse_duration(timeout)
        return self.client.sync(self._set, _pack(value), timeout=seconds)

    async def _set(self, packed: Msg) -> None:
        await self._request("variable-set", **packed)

    def get(self, timeout: float | str | None = None) -> Any:
        """The value; waits for one to be set, at most ``timeout`` seconds."""
        return self._sync(self._get, config.parse_duration(timeout))

    async def _get(self, timeout: float | None) -> Any:
        reply = await self._blocking("variable-get", timeout=timeout)
        if reply.get("timeout"):
            raise TimeoutError(f"{self!r} had no value within {timeout} s")
        return _unpack(self.client, reply["value"])

    def delete(self) -> None:
        """Forget the value (for everyone); getters then wait for a new one."""
        self._post("variable-delete")

    def __reduce__(self) -> Any:
        return type(self), (self.name,)


class Queue(_Primitive):
    """A first-in, first-out queue shared by every client using this ``name``.

    ``put(value)`` appends any picklable value or a Future (whose result the scheduler
    keeps while it is queued); ``get()`` takes the oldest, waiting for one. With
    ``maxsize > 0``, ``put`` waits for room. Timeouts raise ``TimeoutError``.
    """

    _prefix = "queue"

    def __init__(
        self, name: Hashable | None = None, client: Client | None = None, maxsize: int = 0
    ) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an integer, not {maxsize!r}")
        super().__init__(name, client)
        self.maxsize = maxsize

    def put(self, value: Any, timeout: float | str | None = None) -> Any:
        """Append ``value``, waiting at most ``timeout`` seconds for room."""
        return self._sync(self._put, _pack(value), config.parse_duration(timeout))

    async def _put(self, packed: Msg, timeout: float | None) -> None:
        reply = await self._blocking("queue-put", maxsize=self.maxsize, timeout=timeout, **packed)
        if isinstance(reply, dict) and reply.get("timeout"):
            raise TimeoutError(f"{self!r} had no room within {timeout} s")

    def get(self, timeout: float | str | None = None, batch: bool | int = False) -> Any:
        """The oldest value, waiting at most ``timeout`` seconds for one.

        ``batch=True``: a list of every value queued now (maybe empty); ``batch=n``: a
        list of the next ``n`` values, waiting for all of them (no timeout then).
        """
        if not isinstance(batch, bool) and (not isinstance(batch, int) or batch < 0):
            raise ValueError(f"batch must be True, False or a count >= 0, not {batch!r}")
        if not isinstance(batch, bool) and timeout is not None:
            raise NotImplementedError(
                "Dask queues don't support simultaneous use of integer batch sizes and timeouts"
            )
        return self._sync(self._get, config.parse_duration(timeout), batch)

    async def _get(self, timeout: float | None, batch: bool | int) -> Any:
        reply = await self._blocking(
            "queue-get", maxsize=self.maxsize, timeout=timeout, batch=batch
        )
        if reply.get("timeout"):
            raise TimeoutError(f"{self!r} had nothing to get within {timeout} s")
        if "values" in reply:
            return [_unpack(self.client, v) for v in reply["values"]]
        return _unpack(self.client, reply["value"])

    def qsize(self) -> Any:
        """How many values are queued now."""
        return self._sync(self._request, "queue-qsize")

    def close(self) -> Any:
        """Drop the queue and what it holds (for everyone); waiting calls fail."""
        return self._sync(self._request, "queue-close")

    def __reduce__(self) -> Any:
        return type(self), (self.name, None, self.maxsize)


def _pack(value: Any) -> Msg:
    """A value as it is stored: a Future's key, or the pickled value."""
    if isinstance(value, Future):
        return {"key": value.key}
    return {"data": dumps(value)}


def _unpack(client: Client, stored: Msg) -> Any:
    """The value back: a Future (its key already wanted by this client), or unpickled."""
    if "key" in stored:
        key = stored["key"]
        fut = Future(key, client)
        # The scheduler made this client want the key before answering; saying so again
        # now that the future exists brings its state (finished, erred) to the future.
        client._send({"op": "client-desires-keys", "keys": [key]})
        return fut
    data = stored["data"]
    if not isinstance(data, Serialized):
        raise TypeError(f"unexpected stored value of type {type(data).__name__}")
    return loads(data)


def _local_error(e: RemoteError) -> Exception:
    """The builtin exception a scheduler-side failure names, or the RemoteError."""
    name, _, text = str(e).partition(": ")
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(text)
    return e
