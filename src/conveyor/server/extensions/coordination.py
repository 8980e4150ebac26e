"""Coordination primitives kept by the scheduler: semaphores (and locks) and events
here, variables and queues in :mod:`.values`, shared between clients by name.

Everything is plain data: names, lease ids, client ids, task keys, and values that
clients pickled (``Serialized``, passed through unopened). A request that has to wait (an
acquire, an event wait, a get, a put into a full queue) is a
:class:`~conveyor.server.extensions.waiting.Waiter`, answered when its condition holds,
when its timeout passes, or not at all when its client disconnects. Waiters are served
first in, first out.

The extension is also a scheduler plugin: a client that disconnects loses its waiting
requests, then its leases (the next waiters get them).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from conveyor.rpc import Msg, Peer
from conveyor.server.extensions.values import ValueStores
from conveyor.server.extensions.waiting import Waiter, client_of, name_of, timeout_of
from conveyor.server.plugin import SchedulerPlugin

if TYPE_CHECKING:
    from conveyor.server.scheduler import Scheduler

logger = logging.getLogger("conveyor.scheduler")


class _Semaphore:
    __slots__ = ("leases", "max_leases", "waiters")

    def __init__(self, max_leases: int) -> None:
        self.max_leases = max_leases
        #: lease id -> holder (client id)
        self.leases: dict[str, str] = {}
        #: lease id -> waiting acquire, in arrival order
        self.waiters: dict[str, Waiter] = {}


class _Event:
    __slots__ = ("flag", "waiters")

    def __init__(self) -> None:
        self.flag = False
        self.waiters: dict[int, Waiter] = {}


class CoordinationExtension(ValueStores, SchedulerPlugin):
    """Scheduler side of :class:`conveyor.Lock`, ``Semaphore``, ``Event``, ``Variable``
    and ``Queue``; made once per scheduler with ``CoordinationExtension(scheduler)``."""

    name = "coordination"

    def __init__(self, scheduler: Scheduler) -> None:
        super().__init__(scheduler)
        self.semaphores: dict[Hashable, _Semaphore] = {}
        self.events: dict[Hashable, _Event] = {}
        #: client id -> the leases it holds, as (semaphore name, lease id)
        self._leases: dict[str, set[tuple[Hashable, str]]] = {}
        scheduler.handlers.update(
            {
                "semaphore-acquire": self.semaphore_acquire,
                "semaphore-release": self.semaphore_release,
                "semaphore-value": self.semaphore_value,
                "semaphore-close": self.semaphore_close,
                "event-wait": self.event_wait,
                "event-set": self.event_set,
                "event-clear": self.event_clear,
                "event-is-set": self.event_is_set,
                "variable-set": self.variable_set,
                "variable-get": self.variable_get,
                "variable-delete": self.variable_delete,
                "queue-put": self.queue_put,
                "queue-get": self.queue_get,
                "queue-qsize": self.queue_qsize,
                "queue-close": self.queue_close,
                "coordination-cancel": self.cancel,
            }
        )
        scheduler.plugins[self.name] = self

    # ----------------------------------------------------------------- plugin

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        """A client left: drop its waiting requests, then free its leases."""
        self.drop_client_requests(client)
        for name, lease in sorted(self._leases.pop(client, ()), key=repr):
            sem = self.semaphores.get(name)
            if sem is not None and sem.leases.pop(lease, None) is not None:
                logger.info("Client %s left holding a lease on %r: released", client, name)
                self._grant_waiting(name, sem)

    def close(self) -> None:
        """The scheduler is closing: fail every waiting request."""
        self.fail_all(RuntimeError("the scheduler is closing"))

    # ------------------------------------------------------------- semaphores

    def semaphore_acquire(self, peer: Peer, msg: Msg) -> Any:
        """Take a lease (``True``), or wait for one; ``False`` once ``timeout`` passes."""
        client = client_of(peer)
        name, lease, timeout = name_of(msg), str(msg["lease_id"]), timeout_of(msg)
        max_leases = msg["max_leases"]
        if type(max_leases) is not int or max_leases < 1:
            raise ValueError(f"max_leases must be a positive integer, not {max_leases!r}")
        sem = self.semaphores.get(name)
        if sem is None:
            sem = self.semaphores[name] = _Semaphore(max_leases)
        elif sem.max_leases != max_leases:
            raise ValueError(
                f"Inconsistent max leases for {name!r}: {max_leases}, expected {sem.max_leases}"
            )
        if lease in sem.leases:
            return True
        if lease in sem.waiters:
            raise ValueError(f"lease {lease!r} on {name!r} is already requested")
        if len(sem.leases) < sem.max_leases and not sem.waiters:
            self._grant(name, sem, lease, client)
            return True
        if timeout == 0:
            self._semaphore_gc(name, sem)
            return False

        def give_up(w: Waiter) -> None:
            if sem.waiters.get(lease) is w:
                del sem.waiters[lease]
            self.answer(w, False)
            self._semaphore_gc(name, sem)

        w = sem.waiters[lease] = self.wait(client, msg, timeout, give_up)
        return w.future

    def semaphore_release(self, peer: Peer, msg: Msg) -> bool:
        """Return a lease (or withdraw a waiting acquire); False if it is not known."""
        name, lease = name_of(msg), str(msg["lease_id"])
        sem = self.semaphores.get(name)
        if sem is None:
            return False
        holder = sem.leases.pop(lease, None)
        if holder is not None:
            held = self._leases.get(holder)
            if held is not None:
                held.discard((name, lease))
                if not held:
                    del self._leases[holder]
            self._grant_waiting(name, sem)
            return True
        w = sem.waiters.pop(lease, None)
        if w is None:
            return False
        self.answer(w, False)
        self._semaphore_gc(name, sem)
        return True

    def semaphore_value(self, peer: Peer, msg: Msg) -> int:
        """How many leases are held."""
        sem = self.semaphores.get(name_of(msg))
        return 0 if sem is None else len(sem.leases)

    def semaphore_close(self, peer: Peer, msg: Msg) -> None:
        """Forget the semaphore: its leases vanish and waiting acquires fail."""
        name = name_of(msg)
        sem = self.semaphores.pop(name, None)
        if sem is None:
            return
        for lease, holder in sem.leases.items():
            held = self._leases.get(holder)
            if held is not None:
                held.discard((name, lease))
                if not held:
                    del self._leases[holder]
        for w in list(sem.waiters.values()):
            self.answer(w, error=RuntimeError(f"the semaphore {name!r} was closed"))

    def _grant(self, name: Hashable, sem: _Semaphore, lease: str, client: str) -> None:
        sem.leases[lease] = client
        self._leases.setdefault(client, set()).add((name, lease))

    def _grant_waiting(self, name: Hashable, sem: _Semaphore) -> None:
        while sem.waiters and len(sem.leases) < sem.max_leases:
            lease = next(iter(sem.waiters))
            w = sem.waiters.pop(lease)
            self._grant(name, sem, lease, w.client)
            self.answer(w, True)
        self._semaphore_gc(name, sem)

    def _semaphore_gc(self, name: Hashable, sem: _Semaphore) -> None:
        if not sem.leases and not sem.waiters and self.semaphores.get(name) is sem:
            del self.semaphores[name]

    # ----------------------------------------------------------------- events

    def event_wait(self, peer: Peer, msg: Msg) -> Any:
        """True once the event is set; False if ``timeout`` passes first."""
        client = client_of(peer)
        name, timeout = name_of(msg), timeout_of(msg)
        ev = self.events.get(name)
        if ev is not None and ev.flag:
            return True
        if timeout == 0:
            return False
        if ev is None:
            ev = self.events[name] = _Event()
        wid = next(self._ids)

        def give_up(w: Waiter) -> None:
            ev.waiters.pop(wid, None)
            self.answer(w, False)
            if not ev.flag and not ev.waiters and self.events.get(name) is ev:
                del self.events[name]

        w = ev.waiters[wid] = self.wait(client, msg, timeout, give_up)
        return w.future

    def event_set(self, peer: Peer, msg: Msg) -> None:
        """Set the flag and wake every waiter."""
        name = name_of(msg)
        ev = self.events.get(name)
        if ev is None:
            ev = self.events[name] = _Event()
        ev.flag = True
        waiters, ev.waiters = ev.waiters, {}
        for w in waiters.values():
            self.answer(w, True)

    def event_clear(self, peer: Peer, msg: Msg) -> None:
        """Clear the flag."""
        name = name_of(msg)
        ev = self.events.get(name)
        if ev is not None:
            ev.flag = False
            if not ev.waiters:
                del self.events[name]

    def event_is_set(self, peer: Peer, msg: Msg) -> bool:
        """The flag."""
        ev = self.events.get(name_of(msg))
        return ev is not None and ev.flag
