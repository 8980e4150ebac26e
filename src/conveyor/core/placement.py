"""Where a task goes: the worker that would start it earliest, chosen from a bounded
sample so that placing one task costs O(1), not O(workers); root-ish tasks go to the
least loaded worker with an open slot. Mixed into the scheduler's transitions."""

from __future__ import annotations

import math
from itertools import islice
from typing import TYPE_CHECKING

from conveyor.core.records import TaskState, WorkerInfo
from conveyor.core.restrictions import Restrictions
from conveyor.core.ring import Ring

#: most workers weighed when placing one task: placement costs O(1), not O(workers)
PLACEMENT_SAMPLE = 20


class Placement(Restrictions):
    """Choosing workers for tasks; the state it reads lives in the transitions."""

    if TYPE_CHECKING:
        worker_saturation: float
        total_nthreads: int
        bandwidth: float
        open_slots: dict[str, WorkerInfo]
        idle: dict[str, WorkerInfo]
        retiring: dict[str, WorkerInfo]
        paused: dict[str, WorkerInfo]
        _ring: Ring
        _ring_at: int

    def _is_rootish(self, ts: TaskState) -> bool:
        """Root-ish: an unrestricted task in a large group with few, small dependencies."""
        rare = ts._rare
        if rare is not None and (
            rare.worker_restrictions is not None or rare.resource_restrictions is not None
        ):
            return False
        if math.isinf(self.worker_saturation):
            return False
        group = ts.group
        if group.ntasks <= 2 * self.total_nthreads:
            return False
        deps = group.dependencies
        return len(deps) < 5 and sum(g.ntasks for g in deps) < 5

    def _decide_rootish(self) -> WorkerInfo | None:
        """The least loaded of the first ``PLACEMENT_SAMPLE`` workers with open slots;
        the one chosen goes to the back, so the sample rotates through them all."""
        best: WorkerInfo | None = None
        best_load = math.inf
        for ws in islice(self.open_slots.values(), PLACEMENT_SAMPLE):
            load = (len(ws.processing) - len(ws.long_running)) / ws.nthreads
            if load < best_load:
                best, best_load = ws, load
        if best is not None and len(self.open_slots) > 1:
            del self.open_slots[best.address]
            self.open_slots[best.address] = best
        return best

    def _some_workers(self) -> list[WorkerInfo]:
        """``PLACEMENT_SAMPLE`` workers, taking turns (all of them if fewer)."""
        ring = self._ring.members
        n = len(ring)
        if n <= PLACEMENT_SAMPLE:
            return ring
        start = self._ring_at % n
        self._ring_at = start + PLACEMENT_SAMPLE
        return [ring[(start + i) % n] for i in range(PLACEMENT_SAMPLE)]

    def _decide_worker(self, ts: TaskState) -> WorkerInfo | None:
        """The worker where ``ts`` would start earliest, or None if none can run it."""
        if not self.workers:
            return None
        rare = ts._rare
        pool: list[WorkerInfo] | set[WorkerInfo] | None = None
        if rare is not None and (
            rare.worker_restrictions is not None or rare.resource_restrictions is not None
        ):
            pool = self._restricted_pool(rare)
            if pool is not None and not pool:
                return None
        elif self._is_rootish(ts):
            return self._decide_rootish()
        restricted = pool is not None
        if pool is None:
            if ts.dependencies:
                pool = set()
                for dep in ts.dependencies:
                    pool.update(dep.who_has)
                if len(self.idle) <= PLACEMENT_SAMPLE:
                    pool.update(self.idle.values())
                if not pool:
                    pool = self._some_workers()
            elif self.idle:
                pool = list(islice(self.idle.values(), PLACEMENT_SAMPLE))
            else:
                pool = self._some_workers()
        if self.retiring or self.paused:  # retiring and paused workers take no tasks
            pool = [ws for ws in pool if ws.status == "running"]
            if not pool and not restricted:
                pool = [ws for ws in self._ring if ws.status == "running"][:PLACEMENT_SAMPLE]
            if not pool:
                return None
        return min(pool, key=lambda ws: (self._start_time(ts, ws), ws.address))

    def _start_time(self, ts: TaskState, ws: WorkerInfo) -> float:
        missing = 0
        for dep in ts.dependencies:
            if ws not in dep.who_has:
                missing += max(dep.nbytes, 0)
        return ws.occupancy / ws.nthreads + missing / self.bandwidth
