"""Requests the scheduler answers later: the waiting side of the coordination extension.

A :class:`Waiter` is an asyncio future that a request handler returns; the scheduler's
dispatcher replies when it is resolved. It is resolved once: by the operation that meets
its condition, by its timeout (``loop.call_later``), when its client withdraws it (by
its token) or disconnects, or with an error when the scheduler closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any

from conveyor.rpc import Msg, Peer

#: the answer to a request whose timeout passed
TIMED_OUT: Msg = {"timeout": True}


class Waiter:
    """A request waiting for its condition; answered exactly once."""

    __slots__ = ("batch", "client", "future", "give_up", "timer", "token", "values", "want")

    def __init__(self, client: str, give_up: Callable[[Waiter], None], token: Any) -> None:
        self.client = client
        #: the client's name for the request, to withdraw it by
        self.token = token
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.give_up = give_up
        self.timer: asyncio.TimerHandle | None = None
        #: what it carries (a put) or has gathered so far (a batched get)
        self.values: list[tuple[str, Any]] = []
        #: how many values a get waits for, and whether it answers with a list
        self.want = 1
        self.batch = False


class WaitingRequests:
    """Bookkeeping of waiting requests, by client and by token."""

    def __init__(self) -> None:
        #: client id -> its waiting requests
        self._waiting: dict[str, set[Waiter]] = {}
        #: (client id, token) -> waiting request, for withdrawing it
        self._tokens: dict[tuple[str, Any], Waiter] = {}

    def wait(
        self,
        client: str,
        msg: Msg,
        timeout: float | None,
        give_up: Callable[[Waiter], None],
    ) -> Waiter:
        """A new waiter for ``client``'s request ``msg``. ``give_up(waiter)`` runs after
        ``timeout`` seconds, or when the client disconnects or withdraws the request; it
        undoes what the request did and answers it."""
        w = Waiter(client, give_up, msg.get("token"))
        if timeout is not None:
            w.timer = asyncio.get_running_loop().call_later(timeout, give_up, w)
        self._waiting.setdefault(client, set()).add(w)
        if w.token is not None:
            self._tokens[client, w.token] = w
        return w

    def answer(self, w: Waiter, value: Any = None, error: Exception | None = None) -> None:
        """Answer ``w`` (once) and forget it."""
        if w.timer is not None:
            w.timer.cancel()
        if w.token is not None and self._tokens.get((w.client, w.token)) is w:
            del self._tokens[w.client, w.token]
        mine = self._waiting.get(w.client)
        if mine is not None:
            mine.discard(w)
            if not mine:
                del self._waiting[w.client]
        if not w.future.done():
            if error is not None:
                w.future.set_exception(error)
            else:
                w.future.set_result(value)

    def cancel(self, peer: Peer, msg: Msg) -> None:
        """The client gave up on a waiting request (named by its token)."""
        w = self._tokens.get((peer.ident, msg.get("token")))
        if w is not None:
            w.give_up(w)

    def drop_client_requests(self, client: str) -> None:
        """``client`` left: give up each of its waiting requests."""
        for w in list(self._waiting.pop(client, ())):
            w.give_up(w)

    def fail_all(self, error: Exception) -> None:
        """Answer every waiting request with ``error``."""
        for waiters in list(self._waiting.values()):
            for w in list(waiters):
                self.answer(w, error=error)


def client_of(peer: Peer) -> str:
    """The id of the client that sent a request (only registered clients may)."""
    if peer.role != "client":
        raise ValueError("coordination requests must come from a registered client")
    return peer.ident


def name_of(msg: Msg) -> Hashable:
    """The name a request is about."""
    name = msg["name"]
    hash(name)  # TypeError: not a name
    return name  # type: ignore[no-any-return]


def timeout_of(msg: Msg) -> float | None:
    """A request's timeout in seconds (None: wait as long as it takes)."""
    timeout = msg.get("timeout")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ValueError(f"timeout must be a number of seconds, not {timeout!r}")
    return max(float(timeout), 0.0)
