"""Workers in the order they were last heard from, for the worker time-to-live.

Theory of operation
-------------------
Every message that proves a worker alive (a heartbeat, a finished task) sets its
``last_seen`` through :meth:`Liveness.seen`, which moves it to the back of an ordered
dict in O(1). As long as event times never go backwards, the dict is then sorted by
``last_seen``, oldest first, and the workers silent for longer than the ttl are a prefix
of it: the periodic tick reads that prefix and stops at the first worker still alive,
O(1 + expired) instead of a scan of every worker.

The shell's clock is the wall clock, which may step back. A time earlier than the latest
one placed marks the order unsorted; the next :meth:`Liveness.expired` then sorts it once
(stable, O(workers log workers)) before it reads the prefix, so the answer is always
exactly the set of workers with ``now - last_seen > ttl``. Expired workers are returned
in the order they joined, the order the scheduler's ``workers`` dict keeps (and a scan of
it would find them).
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import pairwise

from conveyor.core.records import WorkerInfo


class Liveness:
    """Registered workers ordered by ``last_seen``, oldest first."""

    __slots__ = ("_joined", "_joins", "_latest", "_order", "_sorted")

    def __init__(self) -> None:
        self._order: OrderedDict[str, WorkerInfo] = OrderedDict()
        #: address -> a number that grows with each join: the order workers joined
        self._joined: dict[str, int] = {}
        self._joins = 0
        #: the latest ``last_seen`` placed at the back (never lowered: a conservative
        #: bound, so a time below it may mark the order unsorted needlessly, not wrongly)
        self._latest = float("-inf")
        #: whether ``_order`` is sorted by ``last_seen``
        self._sorted = True

    def add(self, ws: WorkerInfo) -> None:
        """``ws`` joined (its ``last_seen`` is the time it did)."""
        self._joins += 1
        self._joined[ws.address] = self._joins
        self._order[ws.address] = ws
        self._order.move_to_end(ws.address)
        self._placed(ws.last_seen)

    def remove(self, ws: WorkerInfo) -> None:
        """``ws`` left (nothing happens if it was not here)."""
        if self._order.get(ws.address) is ws:
            del self._order[ws.address]
            del self._joined[ws.address]

    def seen(self, ws: WorkerInfo, now: float) -> None:
        """Registered worker ``ws`` was heard from at ``now``: set its ``last_seen`` and
        move it to the back. Called for every finished task: kept to the bare minimum."""
        ws.last_seen = now
        self._order.move_to_end(ws.address)
        if now >= self._latest:
            self._latest = now
        else:
            self._sorted = False

    def _placed(self, t: float) -> None:
        if t >= self._latest:
            self._latest = t
        else:
            self._sorted = False

    def expired(self, now: float, ttl: float) -> list[WorkerInfo]:
        """The workers not heard from for longer than ``ttl`` at ``now``, in the order
        they joined."""
        if not self._sorted:
            self._sort()
        out = []
        for ws in self._order.values():
            if now - ws.last_seen > ttl:
                out.append(ws)
            else:
                break
        if len(out) > 1:
            joined = self._joined
            out.sort(key=lambda ws: joined[ws.address])
        return out

    def _sort(self) -> None:
        ordered = sorted(self._order.values(), key=lambda ws: ws.last_seen)
        self._order = OrderedDict((ws.address, ws) for ws in ordered)
        self._latest = ordered[-1].last_seen if ordered else float("-inf")
        self._sorted = True

    # ------------------------------------------------------------ checking

    def problems(self, workers: dict[str, WorkerInfo]) -> list[str]:
        """What is inconsistent with the scheduler's ``workers`` (for the invariant
        checks): empty when the bookkeeping is right."""
        out = []
        if any(workers.get(a) is not ws for a, ws in self._order.items()):
            out.append("a removed worker is in the liveness order")
        if set(self._order) != set(workers):
            out.append("liveness order and workers differ")
        if set(self._joined) != set(self._order):
            out.append("join numbers and liveness order differ")
        if self._sorted:
            seen = [ws.last_seen for ws in self._order.values()]
            if any(a > b for a, b in pairwise(seen)):
                out.append("liveness order does not match last_seen (set it with seen())")
            if seen and seen[-1] > self._latest:
                out.append("latest time placed is below a worker's last_seen")
        joined = [self._joined[a] for a in workers if a in self._joined]
        if joined != sorted(joined):
            out.append("join numbers out of the workers' order")
        return out
