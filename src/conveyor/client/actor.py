"""Actors from the client: a handle whose method calls and attribute reads run on the
worker holding the object (see :mod:`conveyor.server.actors`).

``client.submit(Counter, actor=True)`` returns a Future; its result is an
:class:`Actor`. ``counter.increment()`` sends the call to the worker and returns an
:class:`ActorFuture` at once (``.result()`` waits); ``counter.n`` reads the attribute
there and returns its value. From an asynchronous client, ``await counter.increment()``
and ``await counter.n``-style reads work the same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from conveyor.protocol import dumps, loads, unpack_traceback, unpickle_bytes

if TYPE_CHECKING:
    from conveyor.client.client import Client


class Actor:
    """A handle on an object living on one worker (``submit(Cls, actor=True)``)."""

    def __init__(
        self, cls: type, address: str, key: Any, client: Client, future: Any = None
    ) -> None:
        self._cls = cls
        self._address = address
        self.key = key
        self._client = client
        #: keeps the actor alive on its worker for as long as this handle exists
        self._future = future

    def __repr__(self) -> str:
        return f"<Actor: {self._cls.__name__}, key={self.key}, worker={self._address}>"

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._cls)) | {"key"})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        attribute = getattr(self._cls, name, None)
        if callable(attribute):
            return self._method(name)
        read = self._client.sync(self._request, {"op": "actor-attribute", "name": name})
        return read

    def _method(self, name: str) -> Callable[..., ActorFuture]:
        def call(*args: Any, **kwargs: Any) -> ActorFuture:
            msg = {"op": "actor-call", "method": name, "args": dumps((args, kwargs))}
            return ActorFuture(self._client, self._request(msg))

        call.__name__ = name
        return call

    async def _request(self, msg: dict[str, Any]) -> Any:
        pool = self._client.pool
        if pool is None:
            raise RuntimeError("this client is not connected")
        msg["key"] = self.key
        peer = await pool.get(self._address)
        reply = await peer.request(msg)
        if "exception" in reply:
            exc = unpickle_bytes(reply["exception"])
            if not isinstance(exc, BaseException):
                exc = RuntimeError(repr(exc))
            tb = unpack_traceback(reply.get("traceback"))
            raise exc.with_traceback(tb) if tb is not None else exc
        return loads(reply["result"])


class ActorFuture:
    """The pending result of an actor method call: ``result()`` waits for it."""

    def __init__(self, client: Client, coro: Any) -> None:
        self._client = client
        self._future: asyncio.Future[Any] | concurrent.futures.Future[Any]
        if client.asynchronous:
            self._future = asyncio.ensure_future(coro)
        else:
            assert client.loop is not None
            self._future = asyncio.run_coroutine_threadsafe(coro, client.loop)

    def done(self) -> bool:
        """Whether the call has returned (or failed)."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> Any:
        """The method's return value, waiting up to ``timeout`` seconds; its exception
        if it raised."""
        if isinstance(self._future, asyncio.Future):
            if not self._future.done():
                raise RuntimeError("from an asynchronous client, await the ActorFuture")
            return self._future.result()
        return self._future.result(timeout)

    def __await__(self) -> Generator[Any, None, Any]:
        future = self._future
        if isinstance(future, concurrent.futures.Future):
            return asyncio.wrap_future(future).__await__()
        return future.__await__()

    def __repr__(self) -> str:
        return f"<ActorFuture {'done' if self.done() else 'pending'}>"
