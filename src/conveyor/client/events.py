"""Structured events from the client: ``log_event``, ``get_events`` and topic
subscriptions (:class:`EventsMixin`, one of ``Client``'s bases).

The scheduler keeps the latest events of each topic as ``(time, msg)``; ``msg`` must be
a msgpack value. A subscribed client is pushed every new event of the topic, and calls
its handler with it, one event at a time and in order: on the event loop for an
asynchronous client, on a thread for a synchronous one (a slow handler then delays only
later events, never the client's loop).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

from conveyor.rpc import Msg, RemoteError

if TYPE_CHECKING:
    from conveyor.client.shape import ClientShape

    class _EventsClient(ClientShape, Protocol):
        _topics: TopicHandlers

        def _drain_outbox(self) -> None: ...


logger = logging.getLogger("conveyor.client")

#: one logged event: (the scheduler's time, msg)
TopicEvent = tuple[float, Any]


class TopicHandlers:
    """A client's topic handlers, and the delivery of events to them in order."""

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[TopicEvent], Any]] = {}
        self._backlog: deque[tuple[str, TopicEvent]] = deque()
        self._lock = threading.Lock()
        self._draining = False

    def deliver(self, client: ClientShape, topic: str, event: TopicEvent) -> None:
        """Queue an event (on the loop); start the one drain that calls the handlers."""
        with self._lock:
            self._backlog.append((topic, event))
            if self._draining:
                return
            self._draining = True
        loop = client.loop
        assert loop is not None
        if client.asynchronous:
            loop.create_task(self._drain_async())
        else:  # a thread of its own, ending with the drain (not an idle pool thread)
            name = "conveyor-topic-handlers"
            threading.Thread(target=self._drain, args=(loop,), name=name, daemon=True).start()

    def _next(self) -> tuple[Callable[[TopicEvent], Any] | None, TopicEvent] | None:
        with self._lock:
            if not self._backlog:
                self._draining = False
                return None
            topic, event = self._backlog.popleft()
        return self.handlers.get(topic), event

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Call the handlers of queued events, on a thread (a synchronous client)."""
        while (item := self._next()) is not None:
            handler, event = item
            if handler is None:  # unsubscribed meanwhile
                continue
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    asyncio.run_coroutine_threadsafe(_wait_for(result), loop).result()
            except Exception:
                logger.exception("Error in the event handler %r", handler)

    async def _drain_async(self) -> None:
        """Call the handlers of queued events, on the loop (an asynchronous client)."""
        while (item := self._next()) is not None:
            handler, event = item
            if handler is None:
                continue
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("Error in the event handler %r", handler)


class EventsMixin:
    """``Client`` methods for structured events."""

    _topics: TopicHandlers

    def _init_events(self: _EventsClient) -> None:
        self._topics = TopicHandlers()
        topics = self._topics
        self._handlers["event"] = lambda peer, msg: topics.deliver(
            self, msg["topic"], (msg["event"][0], msg["event"][1])
        )

    def log_event(self: _EventsClient, topic: str | Collection[str], msg: Any) -> Any:
        """Log ``msg`` under ``topic`` (or under each of a list of topics) on the
        scheduler, which stamps it with its time. ``msg`` must be msgpack-serializable
        (numbers, strings, bytes, lists, dicts, None): TypeError otherwise."""
        topics = _topics(topic)
        try:
            msgpack.packb(msg, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as e:
            raise TypeError(
                f"Message must be msgpack serializable. Got {type(msg)=} instead ({e})"
            ) from None
        return self.sync(_request, self, {"op": "log-event", "topic": topics, "msg": msg})

    def get_events(self: _EventsClient, topic: str | None = None) -> Any:
        """The events the scheduler keeps for ``topic``, oldest first, as a tuple of
        ``(time, msg)``; without a topic, a dict of every topic's."""
        if topic is not None and not isinstance(topic, str):
            raise TypeError(f"a topic is a string, not {topic!r}")
        return self.sync(_get_events, self, topic)

    def subscribe_topic(
        self: _EventsClient, topic: str, handler: Callable[[TopicEvent], Any]
    ) -> None:
        """Call ``handler((time, msg))`` for every event logged under ``topic`` from now
        on, one at a time and in order: on the event loop for an asynchronous client, on
        a thread for a synchronous one. It may be a coroutine function. Replaces an
        earlier handler of the topic."""
        if not isinstance(topic, str):
            raise TypeError(f"a topic is a string, not {topic!r}")
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {handler!r}")
        if topic in self._topics.handlers:
            logger.info("Handler for %s already set. Overwriting.", topic)
        self._topics.handlers[topic] = handler
        self._send({"op": "subscribe-topic", "topic": topic})

    def unsubscribe_topic(self: _EventsClient, topic: str) -> None:
        """Stop calling the handler of ``topic`` (ValueError if there is none)."""
        if topic not in self._topics.handlers:
            raise ValueError(f"No event handler known for topic {topic}.")
        del self._topics.handlers[topic]
        self._send({"op": "unsubscribe-topic", "topic": topic})


async def _request(client: _EventsClient, msg: Msg) -> Any:
    if client.scheduler is None:
        raise RuntimeError("this client is not connected")
    client._drain_outbox()  # after everything sent before, subscriptions included
    try:
        return await client.scheduler.request(msg)
    except RemoteError as e:
        name, _, text = str(e).partition(": ")
        if name == "TypeError":
            raise TypeError(text) from None
        if name == "ValueError":
            raise ValueError(text) from None
        raise


async def _get_events(client: _EventsClient, topic: str | None) -> Any:
    reply = await _request(client, {"op": "get-events", "topic": topic})
    if topic is not None:
        return tuple(tuple(e) for e in reply)
    return {name: tuple(tuple(e) for e in events) for name, events in reply.items()}


async def _wait_for(awaitable: Any) -> Any:
    return await awaitable


def _topics(topic: object) -> str | list[str]:
    if isinstance(topic, str):
        return topic
    if isinstance(topic, Collection) and all(isinstance(t, str) for t in topic):
        return list(topic)
    raise TypeError(f"a topic is a string or a collection of strings, not {topic!r}")
