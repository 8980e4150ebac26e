"""The scheduler's housekeeping loops, one per period (see ``conveyor.core.housekeeping``).

- every ``delete_interval``: forget the task prefixes that have had no task for that
  long (``Scheduler(delete_interval=...)``, ``scheduler.delete-interval``);
- every ``synchronize_worker_interval``: ask each worker, one after the other, which of
  the keys the scheduler believes it holds it lacks and what it holds besides; lost
  replicas are dropped (and recomputed if they were the last), leaked data is freed
  (``Scheduler(synchronize_worker_interval=...)``,
  ``scheduler.synchronize-worker-interval``).

A period of ``None`` (or ``0``) turns its loop off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from conveyor.core import events as se
from conveyor.core.housekeeping import memory_of
from conveyor.rpc import Handler, Msg, Peer

if TYPE_CHECKING:
    from conveyor.server.scheduler import Scheduler

logger = logging.getLogger("conveyor.scheduler")


async def forget_prefixes_loop(scheduler: Scheduler, interval: float) -> None:
    """Every ``interval``, forget the prefixes empty for at least that long."""
    while True:
        await asyncio.sleep(interval)
        now = time.time()
        scheduler._guarded(
            "forgetting empty prefixes", scheduler.apply, se.ForgetPrefixes(now, now - interval)
        )


async def sync_workers_loop(scheduler: Scheduler, interval: float) -> None:
    """Every ``interval``, send each worker the keys it is believed to hold (one worker
    per turn of the event loop: a large cluster's lists are not built in one go)."""
    while True:
        await asyncio.sleep(interval)
        for address in list(scheduler.stream_comms):
            peer = scheduler.stream_comms.get(address)
            if peer is not None and not peer.closed:
                peer.send({"op": "sync-memory", "keys": memory_of(scheduler.state, address)})
            await asyncio.sleep(0)


def logged_sync_answers(scheduler: Scheduler, handle: Handler) -> Handler:
    """``handle`` for ``memory-synced`` answers, logging those that found lost or
    leaked data (rare: worth a line). An extra key the scheduler still knows is the
    normal crossing of a report with the request, and not logged."""

    def log_then_handle(peer: Peer, msg: Msg) -> object:
        missing = list(msg.get("missing") or ())
        leaked = [k for k in msg.get("extra") or () if k not in scheduler.state.tasks]
        if missing or leaked:
            logger.warning(
                "Worker %s lacks %d key(s) the scheduler believed it held, and holds %d "
                "the scheduler had forgotten (e.g. %r): reconciling",
                peer.ident,
                len(missing),
                len(leaked),
                (missing + leaked)[0],
                extra={"worker": peer.ident, "lost": len(missing), "leaked": len(leaked)},
            )
        return handle(peer, msg)

    return log_then_handle
