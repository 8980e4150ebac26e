"""Structured events on the scheduler: ``(time, msg)`` records logged under topics.

Each topic keeps its latest events in a bounded deque (``conveyor.scheduler.
events-log-length``). Messages are msgpack values (the client checks; the scheduler
stores them as they arrived and never unpickles anything). Clients that subscribed to a
topic are pushed each new event as ``{"op": "event", "topic": ..., "event": (time, msg)}``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from conveyor import config
from conveyor.rpc import Msg, Peer
from conveyor.server.plugin import SchedulerPlugin

if TYPE_CHECKING:
    from conveyor.server.scheduler import Scheduler

logger = logging.getLogger("conveyor.scheduler")


class _Topic:
    __slots__ = ("count", "events", "subscribers")

    def __init__(self, maxlen: int) -> None:
        self.events: deque[tuple[float, Any]] = deque(maxlen=maxlen)
        self.subscribers: set[str] = set()
        #: events ever logged here (the deque keeps the latest)
        self.count = 0


class EventsExtension(SchedulerPlugin):
    """Scheduler side of ``Client.log_event`` / ``get_events`` / ``subscribe_topic``."""

    name = "events"

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        maxlen = config.get("scheduler.events-log-length")
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 0:
            raise ValueError(
                f"conveyor.scheduler.events-log-length must be a count >= 0, not {maxlen!r}"
            )
        self.maxlen = maxlen
        self.topics: dict[str, _Topic] = {}
        scheduler.handlers.update(
            {
                "log-event": self._log_event,
                "get-events": self._get_events,
                "subscribe-topic": self._subscribe,
                "unsubscribe-topic": self._unsubscribe,
            }
        )
        scheduler.plugins[self.name] = self

    def log_event(self, topic: str | Iterable[str], msg: Any) -> None:
        """Log ``msg`` under ``topic`` (or under each topic of a list), stamped with the
        scheduler's time; subscribers are sent the event, plugins' ``log_event`` called."""
        topics = _topics(topic)
        event = (time.time(), msg)
        for name in topics:
            t = self.topics.get(name)
            if t is None:
                t = self.topics[name] = _Topic(self.maxlen)
            t.events.append(event)
            t.count += 1
            if t.subscribers:
                push = {"op": "event", "topic": name, "event": event}
                for client in t.subscribers:
                    peer = self.scheduler.client_comms.get(client)
                    if peer is not None:
                        peer.send(push)
            for plugin_name, plugin in list(self.scheduler.plugins.items()):
                if plugin is self:
                    continue
                try:
                    plugin.log_event(name, msg)
                except Exception:
                    logger.exception("Scheduler plugin %r failed in log_event", plugin_name)

    def get_events(
        self, topic: str | None = None
    ) -> tuple[tuple[float, Any], ...] | dict[str, tuple[tuple[float, Any], ...]]:
        """The events kept for ``topic``, oldest first; for ``None``, every topic's."""
        if topic is not None:
            t = self.topics.get(topic)
            return () if t is None else tuple(t.events)
        return {name: tuple(t.events) for name, t in self.topics.items() if t.events}

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        """A client left: it subscribes to nothing any more."""
        for name, t in list(self.topics.items()):
            t.subscribers.discard(client)
            if not t.subscribers and not t.events:
                del self.topics[name]

    # ---------------------------------------------------------------- handlers

    def _log_event(self, peer: Peer, msg: Msg) -> None:
        self.log_event(msg["topic"], msg.get("msg"))

    def _get_events(self, peer: Peer, msg: Msg) -> Any:
        topic = msg.get("topic")
        return self.get_events(None if topic is None else _topics(topic)[0])

    def _subscribe(self, peer: Peer, msg: Msg) -> None:
        if peer.role != "client":
            raise ValueError("only a registered client may subscribe to a topic")
        name = _topics(msg["topic"])[0]
        t = self.topics.get(name)
        if t is None:
            t = self.topics[name] = _Topic(self.maxlen)
        t.subscribers.add(peer.ident)

    def _unsubscribe(self, peer: Peer, msg: Msg) -> None:
        name = msg["topic"]
        t = self.topics.get(name)
        if t is not None:
            t.subscribers.discard(peer.ident)
            if not t.subscribers and not t.events:
                del self.topics[name]


def _topics(topic: object) -> list[str]:
    """A topic name, or a list of them, as a list of names."""
    names = [topic] if isinstance(topic, str) else topic
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"a topic is a string or a list of strings, not {topic!r}")
    return list(names)
