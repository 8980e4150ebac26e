"""A worker's memory management: where its data lives and what it does when memory is
short.

With a memory limit (``Worker(memory_limit=...)``, ``conveyor worker --memory-limit``),
the fractions of ``conveyor.worker.memory`` act:

* ``target`` (0.6): the data the worker holds, as measured when each value was stored,
  is kept under this fraction by spilling the least recently used values to disk
  (:class:`~conveyor.server.spill.SpillBuffer`, off the event loop);
* ``spill`` (0.7): when the whole process's resident memory crosses this fraction
  (data measured low, memory held by running tasks or by the allocator), more data is
  spilled, enough to bring it back to ``target`` if the data accounts for it;
* ``pause`` (0.8): above this the worker starts no new task and fetches no data until
  memory is back under it (running tasks finish; the log says when it pauses and
  resumes);
* ``terminate`` (0.95): the nanny's, which kills the worker process above it.

A fraction set to ``false`` (or null) turns its behaviour off. The process is measured
every ``monitor-interval`` (100 ms). Without a memory limit, nothing spills and nothing
pauses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import psutil

from conveyor import config
from conveyor.core import worker_events as we
from conveyor.rpc.sizes import nbytes
from conveyor.server.spill import SpillBuffer

__all__ = ["WorkerMemory"]

logger = logging.getLogger("conveyor.worker")


def _fraction(name: str) -> float | None:
    value = config.get(f"worker.memory.{name}", None)
    if value is None or value is False:
        return None
    fraction = float(value)
    if not 0 < fraction <= 1:
        raise ValueError(
            f"conveyor.worker.memory.{name} must be a fraction in (0, 1] or false, not {value!r}"
        )
    return fraction


class WorkerMemory:
    """The data mapping of a worker with ``limit`` bytes (0: no limit), and the loop
    that watches the process's memory."""

    def __init__(self, limit: int, directory: str | None) -> None:
        self.limit = limit
        target = _fraction("target")
        self.spill_at = _fraction("spill")
        self.pause_at = _fraction("pause")
        self.interval = config.parse_duration(config.get("worker.memory.monitor-interval"))
        compression = config.get("worker.memory.spill-compression", None)
        self.data = SpillBuffer(
            int(target * limit) if limit and target else None,
            lambda key, value: nbytes(value),
            directory,
            compression,
        )
        self.paused = False
        self._process = psutil.Process()
        #: the process's memory beyond its data, as last measured (interpreter, modules,
        #: running tasks): what the data in memory may not use of the pause threshold
        self.overhead = self._process.memory_info().rss if limit else 0
        #: memory (the data, plus the rest of the process as last measured) beyond which
        #: the worker pauses as soon as a value is stored, without waiting for the next
        #: look: tasks can make data much faster than it is written
        self.pause_bytes = int(self.pause_at * limit) if limit and self.pause_at else None

    def usage(self) -> dict[str, Any]:
        """The worker's memory and CPU now, for its heartbeat (the dashboard shows them):
        ``rss`` bytes, ``cpu`` percent since the last call, ``managed`` bytes of data in
        memory, ``spilled`` bytes of data on disk (their size in memory) and ``limit``."""
        data = self.data
        return {
            "rss": self._process.memory_info().rss,
            "cpu": self._process.cpu_percent(),
            "managed": data.fast_bytes,
            "spilled": data.slow_bytes,  # a running total: O(1) per heartbeat
            "limit": self.limit,
        }

    async def monitor(self, apply: Callable[[Any], None], running: Callable[[], bool]) -> None:
        """Every ``interval``: spill when the process holds too much, pause and resume
        the worker (``apply`` hands it the event) around the pause threshold."""
        if not self.limit or not self.interval:
            return
        if self.spill_at is None and self.pause_at is None:
            return
        while running():
            await asyncio.sleep(self.interval)
            try:
                self.check(apply)
            except Exception:  # one failed look must not end the watch
                logger.exception("Checking the worker's memory failed")

    def stored(self, apply: Callable[[Any], None]) -> None:
        """A value was stored: pause now if the data alone is over the pause threshold."""
        limit = self.pause_bytes
        used = self.data.fast_bytes + self.overhead
        if limit is not None and not self.paused and used > limit:
            self._set_paused(True, used, apply)

    def check(self, apply: Callable[[Any], None]) -> None:
        """One look at the process's memory."""
        rss = self._process.memory_info().rss
        limit = self.limit
        data = self.data
        self.overhead = max(rss - data.fast_bytes, 0)
        if self.spill_at is not None and rss > self.spill_at * limit and data.fast_bytes:
            aim = data.target if data.target is not None else int(0.9 * self.spill_at * limit)
            data.evict(int(min(rss - aim, data.fast_bytes)))
        if self.pause_at is not None:
            pause = rss > self.pause_at * limit
            if pause != self.paused:
                self._set_paused(pause, rss, apply)

    def _set_paused(self, pause: bool, used: int, apply: Callable[[Any], None]) -> None:
        self.paused = pause
        if pause:
            logger.warning(
                "Worker paused: memory %s is over %.0f%% of its %s limit",
                _mib(used),
                (self.pause_at or 0) * 100,
                _mib(self.limit),
            )
        else:
            logger.info("Worker resumed: process memory %s", _mib(used))
        apply(we.PauseEvent(time.time(), pause))


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"
