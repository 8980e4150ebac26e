"""Variables and queues on the scheduler: named stores of values clients pickled
(opaque ``Serialized``) or of futures' keys.

A stored key is held by a pseudo client (``variable-<name>``, ``queue-<name>``) that
wants it in the scheduler's state, so the result outlives the futures of the client
that stored it. A client handed a key is made to want it before the reply leaves, and
the holder lets go after: there is no moment when nobody wants the key.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from conveyor.core import events as se
from conveyor.protocol import Serialized
from conveyor.rpc import Msg, Peer
from conveyor.server.extensions.waiting import (
    TIMED_OUT,
    Waiter,
    WaitingRequests,
    client_of,
    name_of,
    timeout_of,
)

if TYPE_CHECKING:
    from conveyor.server.scheduler import Scheduler

#: a stored value: ("key", task key) or ("data", Serialized)
Value = tuple[str, Any]


class _Variable:
    __slots__ = ("getters", "value")

    def __init__(self) -> None:
        self.value: Value | None = None
        self.getters: dict[int, Waiter] = {}


class _Queue:
    __slots__ = ("getters", "items", "maxsize", "putters")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: deque[Value] = deque()
        self.getters: dict[int, Waiter] = {}
        self.putters: dict[int, Waiter] = {}

    def has_room(self) -> bool:
        return self.maxsize <= 0 or len(self.items) < self.maxsize


class ValueStores(WaitingRequests):
    """Named variables and queues, and the keys they hold."""

    def __init__(self, scheduler: Scheduler) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.variables: dict[Hashable, _Variable] = {}
        self.queues: dict[Hashable, _Queue] = {}
        #: pseudo client id -> key -> how many stored values name it
        self._holds: dict[str, dict[Hashable, int]] = {}
        self._ids = itertools.count()

    # -------------------------------------------------------------- variables

    def variable_set(self, peer: Peer, msg: Msg) -> None:
        """Store a value (or a future's key, held while stored) and wake the getters."""
        name = name_of(msg)
        value = self._stored_value(msg)
        var = self.variables.get(name)
        if var is None:
            var = self.variables[name] = _Variable()
        holder = f"variable-{name}"
        self._hold(holder, value)  # before the old value lets go: it may name the same key
        old, var.value = var.value, value
        if old is not None:
            self._unhold(holder, old)
        getters, var.getters = var.getters, {}
        for w in getters.values():
            self.answer(w, {"value": self._hand_over(w.client, value)})

    def variable_get(self, peer: Peer, msg: Msg) -> Any:
        """The value, once there is one; ``{"timeout": True}`` if ``timeout`` passes."""
        client = client_of(peer)
        name, timeout = name_of(msg), timeout_of(msg)
        var = self.variables.get(name)
        if var is not None and var.value is not None:
            return {"value": self._hand_over(client, var.value)}
        if timeout == 0:
            return TIMED_OUT
        if var is None:
            var = self.variables[name] = _Variable()
        wid = next(self._ids)

        def give_up(w: Waiter) -> None:
            var.getters.pop(wid, None)
            self.answer(w, TIMED_OUT)
            if var.value is None and not var.getters and self.variables.get(name) is var:
                del self.variables[name]

        w = var.getters[wid] = self.wait(client, msg, timeout, give_up)
        return w.future

    def variable_delete(self, peer: Peer, msg: Msg) -> None:
        """Forget the value (releasing a held key); waiting getters go on waiting."""
        name = name_of(msg)
        var = self.variables.get(name)
        if var is None:
            return
        old, var.value = var.value, None
        if old is not None:
            self._unhold(f"variable-{name}", old)
        if not var.getters:
            del self.variables[name]

    # ----------------------------------------------------------------- queues

    def queue_put(self, peer: Peer, msg: Msg) -> Any:
        """Append a value (FIFO); with a full queue, wait for room until ``timeout``."""
        client = client_of(peer)
        name, timeout = name_of(msg), timeout_of(msg)
        value = self._stored_value(msg)
        q = self._queue(name, msg)
        holder = f"queue-{name}"
        self._hold(holder, value)
        if q.has_room() and not q.putters:
            q.items.append(value)
            self._settle(name, q)
            return True
        if timeout == 0:
            self._unhold(holder, value)
            self._queue_gc(name, q)
            return TIMED_OUT
        wid = next(self._ids)

        def give_up(w: Waiter) -> None:
            q.putters.pop(wid, None)
            self._unhold(holder, value)
            self.answer(w, TIMED_OUT)
            self._queue_gc(name, q)

        w = q.putters[wid] = self.wait(client, msg, timeout, give_up)
        w.values.append(value)
        return w.future

    def queue_get(self, peer: Peer, msg: Msg) -> Any:
        """The next value (``{"value": ...}``), or with ``batch`` a list of them
        (``{"values": [...]}``: all there are for ``True``, exactly ``n`` for ``n``)."""
        client = client_of(peer)
        name, timeout = name_of(msg), timeout_of(msg)
        batch = msg.get("batch", False)
        if batch is False:
            want = 1
        elif batch is True:
            want = -1  # whatever is there
        elif type(batch) is int and batch >= 0:
            want = batch
            if timeout is not None:
                raise ValueError("a queue get of an integer batch takes no timeout")
        else:
            raise ValueError(f"batch must be True, False or a count, not {batch!r}")
        q = self._queue(name, msg)
        got: list[Value] = []
        if not q.getters:  # else: behind the getters already waiting (the queue is empty)
            while want < 0 and q.items:  # what is queued now
                got.append(q.items.popleft())
            while 0 <= len(got) < want and (q.items or self._admit(q)):
                got.append(q.items.popleft())
        self._admit(q)
        if want < 0 or len(got) == want:
            self._queue_gc(name, q)
            return self._get_reply(name, client, got, batch is not False)
        if timeout == 0:  # batch is False: nothing was taken
            self._queue_gc(name, q)
            return TIMED_OUT
        wid = next(self._ids)

        def give_up(w: Waiter) -> None:
            q.getters.pop(wid, None)
            q.items.extendleft(reversed(w.values))  # back to the front, still held
            w.values = []
            self.answer(w, TIMED_OUT)
            if self.queues.get(name) is q:
                self._settle(name, q)
                self._queue_gc(name, q)

        w = q.getters[wid] = self.wait(client, msg, timeout, give_up)
        w.values, w.want, w.batch = got, want, batch is not False
        return w.future

    def queue_qsize(self, peer: Peer, msg: Msg) -> int:
        """How many values wait in the queue."""
        q = self.queues.get(name_of(msg))
        return 0 if q is None else len(q.items)

    def queue_close(self, peer: Peer, msg: Msg) -> None:
        """Drop the queue and its values; waiting puts and gets fail."""
        name = name_of(msg)
        q = self.queues.pop(name, None)
        if q is None:
            return
        holder = f"queue-{name}"
        error = RuntimeError(f"the queue {name!r} was closed")
        for w in [*q.getters.values(), *q.putters.values()]:
            values, w.values = w.values, []
            for v in values:
                self._unhold(holder, v)
            self.answer(w, error=error)
        for v in q.items:
            self._unhold(holder, v)
        q.items.clear()

    def _queue(self, name: Hashable, msg: Msg) -> _Queue:
        maxsize = msg.get("maxsize", 0)
        if type(maxsize) is not int:
            raise ValueError(f"maxsize must be an integer, not {maxsize!r}")
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = _Queue(maxsize)
        elif max(q.maxsize, 0) != max(maxsize, 0):
            raise ValueError(
                f"Inconsistent maxsize for queue {name!r}: {maxsize}, expected {q.maxsize}"
            )
        return q

    def _admit(self, q: _Queue) -> bool:
        """Move waiting puts into the queue while there is room; whether any moved."""
        moved = False
        while q.putters and q.has_room():
            w = q.putters.pop(next(iter(q.putters)))
            values, w.values = w.values, []
            q.items.extend(values)
            self.answer(w, True)
            moved = True
        return moved

    def _settle(self, name: Hashable, q: _Queue) -> None:
        """Serve waiting getters (first come, first served) and admit waiting puts
        until neither can go on."""
        while True:
            progressed = self._admit(q)
            while q.getters and q.items:
                wid = next(iter(q.getters))
                w = q.getters[wid]
                while q.items and len(w.values) < w.want:
                    w.values.append(q.items.popleft())
                    progressed = True
                if len(w.values) < w.want:
                    break
                del q.getters[wid]
                got, w.values = w.values, []
                self.answer(w, self._get_reply(name, w.client, got, w.batch))
            if not progressed:
                return

    def _get_reply(self, name: Hashable, client: str, got: list[Value], batch: bool) -> Msg:
        values = [self._pop_held(name, client, v) for v in got]
        return {"values": values} if batch else {"value": values[0]}

    def _pop_held(self, name: Hashable, client: str, value: Value) -> Msg:
        """``value`` leaves queue ``name`` for ``client``: the client takes over the hold."""
        out = self._hand_over(client, value)
        self._unhold(f"queue-{name}", value)
        return out

    def _queue_gc(self, name: Hashable, q: _Queue) -> None:
        if not (q.items or q.getters or q.putters) and self.queues.get(name) is q:
            del self.queues[name]

    # ------------------------------------------------------------ held keys

    def _hold(self, holder: str, value: Value) -> None:
        """Make pseudo client ``holder`` want the key in ``value`` (counted)."""
        if value[0] != "key":
            return
        counts = self._holds.setdefault(holder, {})
        n = counts.get(value[1], 0)
        counts[value[1]] = n + 1
        if n == 0:
            self.scheduler.apply(se.ClientDesiresKeys(time.time(), holder, [value[1]]))

    def _unhold(self, holder: str, value: Value) -> None:
        if value[0] != "key":
            return
        counts = self._holds.get(holder)
        if counts is None or value[1] not in counts:
            return
        n = counts[value[1]] - 1
        if n:
            counts[value[1]] = n
            return
        del counts[value[1]]
        if counts:
            self.scheduler.apply(se.ClientReleasesKeys(time.time(), holder, [value[1]]))
        else:  # the holder's last key: its record goes too
            del self._holds[holder]
            self.scheduler.apply(se.RemoveClient(time.time(), holder))

    def _stored_value(self, msg: Msg) -> Value:
        """The value a set or put carries: a future's key (known to the scheduler) or
        pickled data."""
        if "key" in msg:
            key = msg["key"]
            if key not in self.scheduler.tasks:
                raise ValueError(
                    f"the future {key!r} is unknown to the scheduler (cancelled or released)"
                )
            return ("key", key)
        data = msg.get("data")
        if not isinstance(data, Serialized):
            raise TypeError("a stored value must be a future's key or pickled data")
        return ("data", data)

    def _hand_over(self, client: str, value: Value) -> Msg:
        """``value`` as a reply to ``client``; a key is first made wanted by the client,
        which may drop the holder's claim right after."""
        if value[0] == "key":
            if client in self.scheduler.client_comms:
                self.scheduler.apply(se.ClientDesiresKeys(time.time(), client, [value[1]]))
            return {"key": value[1]}
        return {"data": value[1]}
