"""``{"op": "dump-state"}``: a summary of the scheduler's state, for diagnosing a hang.

Tests that bound a scenario in time (:mod:`conveyor.testing.bounded`) ask for it when
the bound passes, and fail with it in their message. It reads the state and changes
nothing; its cost is linear in the number of tasks, which is fine for a request made
when something already went wrong.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from conveyor.core.explain import explain
from conveyor.core.transitions import ACTIVE
from conveyor.rpc import Msg, Peer

if TYPE_CHECKING:
    from conveyor.server.scheduler import Scheduler

#: unfinished tasks explained (and keys listed per worker) unless the request says
DEFAULT_LIMIT = 10


class DumpExtension:
    """Answers ``dump-state`` with task counts per state, each worker's status, what it
    runs and holds, the clients, and a sentence (``explain``) for a few unfinished tasks:
    those of ``keys`` if the request names some, else the first ones found."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        scheduler.handlers["dump-state"] = self.dump

    def dump(self, peer: Peer, msg: Msg) -> dict[str, Any]:
        """The summary; keys appear as their ``repr`` (tuples are not msgpack map keys)."""
        state = self.scheduler.state
        now = time.time()
        limit = int(msg.get("limit") or DEFAULT_LIMIT)
        wanted = msg.get("keys")
        if wanted is None:
            keys = [ts.key for ts in state.tasks.values() if ts.state in ACTIVE]
        else:
            keys = [k for k in wanted if (ts := state.tasks.get(k)) is None or ts.state in ACTIVE]
        return {
            "address": self.scheduler.address,
            "tasks": dict(Counter(ts.state for ts in state.tasks.values())),
            "queued": len(state.queued),
            "unrunnable": len(state.unrunnable),
            "workers": {
                address: {
                    "name": ws.name,
                    "status": ws.status,
                    "seconds_since_seen": round(now - ws.last_seen, 3),
                    "processing": len(ws.processing),
                    "processing_keys": [repr(ts.key) for ts in list(ws.processing)[:limit]],
                    "nkeys": len(ws.has_what),
                }
                for address, ws in state.workers.items()
            },
            "clients": {cid: len(cs.wants_what) for cid, cs in state.clients.items()},
            "unfinished": len(keys),
            "explained": [explain(state, key, now) for key in keys[:limit]],
        }
