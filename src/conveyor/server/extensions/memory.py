"""Moving data between workers: ``replicate``, ``rebalance`` and ``retire_workers``.

The plans come from :mod:`conveyor.core.replicas`; every change goes through the state
machine's events (``CopyReplicas``, ``DropReplicas``, ``RetireWorkers``,
``CancelRetirement``). A copy counts once its recipient reports it, so each request
waits for the copies it asked for: it looks again every ``POLL`` seconds (nothing
announces that a particular set of copies is complete), asks again for those still
missing every ``RESEND`` seconds, and gives up a copy whose key left memory or whose
recipient left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from conveyor.core import events as se
from conveyor.core.replicas import Pending, Plan, plan_rebalance, plan_replicate, plan_retire
from conveyor.rpc import Msg, Peer

if TYPE_CHECKING:
    from conveyor.server.scheduler import Scheduler

logger = logging.getLogger("conveyor.scheduler")

#: seconds between looks at whether asked-for copies arrived
POLL = 0.02
#: seconds after which copies still missing are asked for again
RESEND = 2.0
#: seconds a retired worker may take to leave after it was told to close
CLOSE_TIMEOUT = 10.0


class MemoryExtension:
    """Scheduler side of ``Client.replicate``, ``rebalance`` and ``retire_workers``."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        scheduler.handlers.update(
            {
                "replicate": self.replicate,
                "rebalance": self.rebalance,
                "retire-workers": self.retire_workers,
            }
        )

    # -------------------------------------------------------------- requests

    async def replicate(self, peer: Peer, msg: Msg) -> None:
        """Copy ``keys`` onto ``n`` of ``workers`` (all of them by default), dropping
        surplus copies among them; return once the copies are made. Each holder feeds
        at most ``branching_factor`` new copies of a key at a time (all at once: None)."""
        keys = list(msg["keys"])
        n = msg.get("n")
        if n is not None and (not isinstance(n, int) or n < 1):
            raise ValueError(f"n must be a positive number of copies, not {n!r}")
        branching = msg.get("branching_factor")
        if branching is not None and (not isinstance(branching, int) or branching < 1):
            raise ValueError(f"branching_factor must be a positive integer, not {branching!r}")
        workers = self._addresses(msg.get("workers"))
        state = self.scheduler.state
        copies, drops = plan_replicate(state, keys, n, workers, None, branching)
        if drops:
            self.scheduler.apply(se.DropReplicas(time.time(), drops))
        await self._copy(
            copies,
            lambda pending: plan_replicate(state, keys, n, workers, pending, branching)[0],
        )

    async def rebalance(self, peer: Peer, msg: Msg) -> dict[str, int]:
        """Move keys (all by default) between ``workers`` (all by default) so that each
        holds about the same amount of data; return how many keys moved."""
        keys = msg.get("keys")
        workers = self._addresses(msg.get("workers"))
        moves = plan_rebalance(self.scheduler.state, None if keys is None else list(keys), workers)
        copies: Plan = {}
        for key, _, recipient in moves:
            copies.setdefault(recipient, []).append(key)
        await self._copy(copies, None)
        tasks = self.scheduler.state.tasks
        drops: Plan = {}
        moved = 0
        for key, sender, recipient in moves:
            ts = tasks.get(key)
            if ts is not None and any(ws.address == recipient for ws in ts.who_has):
                drops.setdefault(sender, []).append(key)
                moved += 1
        if drops:
            self.scheduler.apply(se.DropReplicas(time.time(), drops))
        return {"moved": moved}

    async def retire_workers(self, peer: Peer, msg: Msg) -> dict[str, Any]:
        """Retire workers gracefully: no new tasks, their running tasks and the data
        only they hold moved to other workers, then closed (``close_workers``) or just
        dropped from the scheduler. Without ``workers`` or ``names``, the scheduler
        chooses (``Scheduler.workers_to_close`` with ``n``, ``target``, ``memory_ratio``,
        ``minimum``). Returns ``{address: info}`` of those retired; a worker whose data
        has nowhere to go is kept (and logged)."""
        state = self.scheduler.state
        if msg.get("workers") is None and msg.get("names") is None:
            chooser = ("n", "target", "memory_ratio", "minimum", "key")
            choice = {k: msg[k] for k in chooser if k in msg}
            wanted = self.scheduler.workers_to_close(**choice)
        else:
            wanted = self._addresses(msg.get("workers")) or []
            wanted += self._by_name(msg.get("names") or ())
        addresses = [a for a in dict.fromkeys(wanted) if a in state.workers]
        if not addresses:
            return {}
        info = state.workers_info()
        retired = {a: info[a] for a in addresses}
        self.scheduler.apply(se.RetireWorkers(time.time(), addresses))
        copies, stuck = plan_retire(state, addresses)
        if stuck:
            logger.warning(
                "Not retiring %s: no other worker to take the data only they hold",
                sorted(stuck),
            )
            self.scheduler.apply(se.CancelRetirement(time.time(), sorted(stuck)))
            addresses = [a for a in addresses if a not in stuck]
            for a in stuck:
                retired.pop(a, None)
        await self._copy(copies, lambda pending: plan_retire(state, addresses, pending)[0])
        await self._close(addresses, bool(msg.get("close_workers", True)))
        return retired

    # ---------------------------------------------------------------- helpers

    def _addresses(self, workers: Any) -> list[str] | None:
        """Worker addresses from addresses or names (unknown ones are left out)."""
        if workers is None:
            return None
        state = self.scheduler.state
        out = []
        for w in workers:
            if w in state.workers:
                out.append(w)
            else:
                out += self._by_name([w])
        return out

    def _by_name(self, names: Any) -> list[str]:
        state = self.scheduler.state
        out = []
        for name in names:
            address = state.names.get(name)
            if address is None:
                address = next((a for n, a in state.names.items() if str(n) == str(name)), None)
            if address is not None:
                out.append(address)
        return out

    async def _copy(self, plan: Plan, replan: Callable[[Pending], Plan] | None) -> None:
        """Ask for the copies in ``plan`` and wait until each arrived or cannot (its key
        left memory, its recipient left). ``replan(pending)`` names copies still needed
        beyond those pending (when a recipient left, say)."""
        scheduler = self.scheduler
        state = scheduler.state
        pending: dict[Any, set[str]] = {}
        sent_at = 0.0
        while scheduler.status == "running":
            for key, recipients in list(pending.items()):
                ts = state.tasks.get(key)
                if ts is None or ts.state != "memory":
                    del pending[key]
                    continue
                recipients -= {ws.address for ws in ts.who_has}
                recipients &= {a for a in recipients if a in state.workers}
                if not recipients:
                    del pending[key]
            now = time.time()
            if plan:
                scheduler.apply(se.CopyReplicas(now, plan))
                for address, keys in plan.items():
                    for key in keys:
                        pending.setdefault(key, set()).add(address)
                sent_at = now
            elif pending and now - sent_at > RESEND:
                again: Plan = {}
                for key, recipients in pending.items():
                    for address in recipients:
                        again.setdefault(address, []).append(key)
                scheduler.apply(se.CopyReplicas(now, again))
                sent_at = now
            plan = replan(pending) if replan is not None else {}
            if not pending and not plan:
                return
            await asyncio.sleep(POLL)

    async def _close(self, addresses: list[str], close: bool) -> None:
        """Close retired workers (or just drop their connections) and wait until the
        scheduler has removed them."""
        scheduler = self.scheduler
        for address in addresses:
            comm = scheduler.stream_comms.get(address)
            if comm is None:
                continue
            if close:
                comm.send({"op": "close", "reason": "retired"})
            else:
                comm.abort()
        deadline = time.monotonic() + CLOSE_TIMEOUT
        while scheduler.status == "running" and any(
            a in scheduler.state.workers for a in addresses
        ):
            if time.monotonic() > deadline:
                for address in addresses:
                    comm = scheduler.stream_comms.get(address)
                    if comm is not None:
                        logger.warning("Retired worker %s did not leave: dropping it", address)
                        comm.abort()
                deadline = float("inf")
            await asyncio.sleep(POLL)
