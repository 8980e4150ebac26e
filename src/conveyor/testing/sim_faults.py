"""Faults that take time, on top of the seeded simulated cluster: frozen workers, stalled
links, heartbeats, the scheduler's worker time-to-live and fetch time-outs.

Theory of operation
-------------------
:class:`FaultySimCluster` is a :class:`~conveyor.testing.simulation.SimCluster` with a
list of *timers* on its fake clock (read that module first). Each step still does one
thing: if a timer fell due (the clock advances a little every step), the earliest one
fires; otherwise a link head or an execution is picked at random, as there.

* Heartbeats (``heartbeat_interval``): every live worker sends ``WorkerHeartbeat`` on its
  control link to the scheduler, in order with its other messages.
* Ticks (``tick_interval``, by default a tenth of ``worker_ttl``): the scheduler handles
  ``Tick`` and, with ``worker_ttl``, removes the workers it has not heard from; the
  ``CloseWorker`` it sends them kills them once delivered.
* Fetch time-outs (``fetch_timeout``): a fetch not answered in time ends with a failed
  ``GatherDepDone`` for the fetcher (as the real shell's request time-out does); the
  request, and any answer still on its way, are then void.

A *frozen* worker (:meth:`FaultySimCluster.freeze`, as ``SIGSTOP``) handles nothing: the
links from and to it hold their messages, its executions do not end, its timers do not
fire (overdue ones fire as soon as it is thawed, as a stopped event loop's do when it
resumes). A *stalled* link (:meth:`FaultySimCluster.stall`) holds its messages while its
ends go on. Messages on one link stay in order throughout.

Time passes only while there is something to wait for. Heartbeats and ticks fire while
a message other than a heartbeat, or an execution, can be delivered; when nothing can
be delivered but a fetch awaits its time-out, or the scheduler still counts a worker it
cannot hear from (frozen, or its control link stalled) and has a ``worker_ttl``, the
clock jumps to the next timer. Otherwise the cluster is at rest (perhaps with messages
held by frozen workers or stalled links: :meth:`~SimCluster.is_quiet` says False then).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conveyor.core import events as ev
from conveyor.core import worker_events as we
from conveyor.core.types import Key
from conveyor.testing.simulation import SCHEDULER, Link, SimCluster, _Fetch

__all__ = ["FaultySimCluster"]


class _Heartbeat:
    """A queued heartbeat: background traffic, which alone keeps no time passing."""

    __slots__ = ("deliver",)

    def __init__(self, deliver: Callable[[], None]) -> None:
        self.deliver = deliver

    def __call__(self) -> None:
        self.deliver()


@dataclass(slots=True)
class _Timer:
    deadline: float
    #: "heartbeat", "tick" or "fetch"
    kind: str
    #: the worker whose loop runs it (the scheduler for ticks)
    owner: str
    fetch: _Fetch | None = None


class FaultySimCluster(SimCluster):
    """A :class:`SimCluster` whose workers can freeze and links stall, with heartbeats,
    ticks, ``worker_ttl`` and fetch time-outs on its fake clock (all off by default)."""

    def __init__(
        self,
        n_workers: int = 3,
        nthreads: int = 2,
        seed: int = 0,
        *,
        heartbeat_interval: float | None = None,
        worker_ttl: float | None = None,
        tick_interval: float | None = None,
        fetch_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        if worker_ttl is not None and heartbeat_interval is None:
            raise ValueError("worker_ttl needs heartbeat_interval: silent workers would expire")
        self.frozen: set[str] = set()
        #: (source or "*", destination, channel) of the links that hold their messages
        self.stalled: set[Link] = set()
        self.timers: dict[int, _Timer] = {}
        self._timer_ids = itertools.count(1)
        self.heartbeat_interval = heartbeat_interval
        if tick_interval is None and worker_ttl is not None:
            tick_interval = worker_ttl / 10
        self.tick_interval = tick_interval
        self.fetch_timeout = fetch_timeout
        #: fetches that timed out, in order: (fetcher, peer, keys)
        self.timeouts: list[tuple[str, str, list[Key]]] = []
        if worker_ttl is not None:
            kwargs["scheduler_kwargs"] = {
                **(kwargs.get("scheduler_kwargs") or {}),
                "worker_ttl": worker_ttl,
            }
        super().__init__(n_workers, nthreads, seed, **kwargs)
        if tick_interval is not None:
            self._arm("tick", SCHEDULER, tick_interval)

    # ------------------------------------------------------------------ faults

    def freeze(self, address: str) -> None:
        """Stop ``address`` (as ``SIGSTOP``): it sends, receives and finishes nothing."""
        if address not in self.workers:
            raise KeyError(address)
        self.frozen.add(address)
        self.trace.append(("freeze", address))

    def thaw(self, address: str) -> None:
        """Let a frozen worker go on (``SIGCONT``) with what it held."""
        self.frozen.discard(address)
        self.trace.append(("thaw", address))

    def stall(self, destination: str, channel: str = "data", source: str = "*") -> None:
        """Hold the messages to ``destination`` on ``channel`` (from ``source``, or from
        anyone): with ``channel="data"``, the worker serves no fetch."""
        self.stalled.add((source, destination, channel))
        self.trace.append(("stall", (source, destination, channel)))

    def unstall(self, destination: str, channel: str = "data", source: str = "*") -> None:
        """Deliver on a stalled link again."""
        self.stalled.discard((source, destination, channel))
        self.trace.append(("unstall", (source, destination, channel)))

    def blocked(self, link: Link) -> bool:
        """The link holds its messages: an end is frozen, or it is stalled."""
        source, destination, channel = link
        frozen, stalled = self.frozen, self.stalled
        return (
            source in frozen
            or destination in frozen
            or link in stalled
            or ("*", destination, channel) in stalled
        )

    # ---------------------------------------------------------- workers' lives

    def add_worker(self, address: str, nthreads: int = 2, name: str | int | None = None) -> None:
        """Start a worker, register it, and start its heartbeats."""
        super().add_worker(address, nthreads, name)
        if self.heartbeat_interval is not None:
            self._arm("heartbeat", address, self.heartbeat_interval)

    def kill_worker(self, address: str, died: bool = True) -> None:
        """The worker dies (frozen or not): as :meth:`SimCluster.kill_worker`, and its
        timers go with it."""
        self.frozen.discard(address)
        for tid in [tid for tid, t in self.timers.items() if t.owner == address]:
            timer = self.timers.pop(tid)
            if timer.fetch is not None:
                timer.fetch.timer = 0
        super().kill_worker(address, died)

    # ----------------------------------------------------------------- hooks

    def _choices(self) -> tuple[list[Link], list[tuple[str, Key]]]:
        links, running = SimCluster._choices(self)
        if self.frozen or self.stalled:
            links = [link for link in links if not self.blocked(link)]
            running = [r for r in running if r[0] not in self.frozen]
        return links, running

    def _fire_timer(self) -> bool:
        if not self.timers:
            return False
        due = self._next_timer(periodic=self._busy(), by=self.now)
        if due is None:
            return False
        self._run_timer(due)
        return True

    def _idle_step(self) -> bool:
        if not self.timers or not self._wants_time():
            return False
        tid = self._next_timer(periodic=True, by=None)
        if tid is None:
            return False
        self.step_count += 1
        self.now = max(self.now, self.timers[tid].deadline)
        self._run_timer(tid)
        self.check()
        return True

    def _fetch(self, fetcher: str, instr: we.GatherDep) -> Callable[[], None]:
        fetch = _Fetch(fetcher, instr.worker, list(instr.keys))
        if self.fetch_timeout is not None:
            fetch.timer = self._arm("fetch", fetcher, self.fetch_timeout, fetch)
        return lambda: self._serve(fetch)

    def _fetch_over(self, fetch: _Fetch) -> None:
        fetch.done = True
        if fetch.timer:
            self.timers.pop(fetch.timer, None)
            fetch.timer = 0

    # ---------------------------------------------------------------- timers

    def _arm(self, kind: str, owner: str, delay: float, fetch: _Fetch | None = None) -> int:
        tid = next(self._timer_ids)
        self.timers[tid] = _Timer(self.now + delay, kind, owner, fetch)
        return tid

    def _next_timer(self, *, periodic: bool, by: float | None) -> int | None:
        """The earliest timer that may fire (due ``by`` that time, if given): its owner
        is not frozen, and heartbeats and ticks only if ``periodic``."""
        best: tuple[float, int] | None = None
        for tid, t in self.timers.items():
            if t.owner in self.frozen or (t.kind != "fetch" and not periodic):
                continue
            if (by is None or t.deadline <= by) and (best is None or (t.deadline, tid) < best):
                best = (t.deadline, tid)
        return None if best is None else best[1]

    def _run_timer(self, tid: int) -> None:
        t = self.timers.pop(tid)
        if t.kind == "tick":
            assert self.tick_interval is not None
            self._arm("tick", SCHEDULER, self.tick_interval)
            self._to_scheduler(ev.Tick(self.now))
        elif t.kind == "heartbeat":
            assert self.heartbeat_interval is not None
            address = t.owner
            self._arm("heartbeat", address, self.heartbeat_interval)
            beat = _Heartbeat(lambda: self._to_scheduler(ev.WorkerHeartbeat(self.now, address)))
            self._send((address, SCHEDULER, "ctl"), beat)
        else:
            fetch = t.fetch
            assert fetch is not None
            fetch.timer = 0
            if fetch.done:
                return
            self._fetch_over(fetch)
            self.timeouts.append((fetch.fetcher, fetch.peer, list(fetch.keys)))
            self.trace.append(("timeout", (fetch.fetcher, fetch.peer)))
            if fetch.fetcher in self.workers:
                done = we.GatherDepDone(self.now, fetch.peer, {}, [], failed=True)
                self._worker_handle(fetch.fetcher, done)

    def _wants_time(self) -> bool:
        """Only the passing of time resolves something: a fetch awaits its time-out, or
        the scheduler counts a worker it cannot hear from and will expire it."""
        frozen = self.frozen
        if any(t.kind == "fetch" and t.owner not in frozen for t in self.timers.values()):
            return True
        if self.scheduler.worker_ttl is None or self.heartbeat_interval is None:
            return False
        return any(
            a in frozen or self.blocked((a, SCHEDULER, "ctl")) for a in self.scheduler.workers
        )

    def _busy(self) -> bool:
        """Heartbeats and ticks go on: there is work to deliver, or time is awaited."""
        links, running = self._choices()
        if running:
            return True
        for link in links:
            if any(not isinstance(action, _Heartbeat) for action in self.links[link]):
                return True
        return self._wants_time()
