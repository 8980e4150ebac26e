#!/usr/bin/env python3
"""Cost at scale of the state machines' failure handling and bookkeeping (no IO).

Run from the repository root::

    python benchmarks/bench_scale.py [--quick] [--json out.json]

It drives ``conveyor.core`` directly, in this process, at two sizes, and prints the
cost of one event of each kind at both and the ratio large / small (flat = near 1):

* the scheduler (``SchedulerState``, ``worker_ttl`` set) with 10 workers and a client
  holding the results of 100 task groups, then with 1,000 workers and 100,000 groups
  (``--quick``: 10,000). Each group is one task ``("grp-<i>", 0)`` that read a shared
  ``base`` result, every other one calling a shared function of its own. The client
  keeps making groups and releasing its oldest ones (submit, finish, release: the number
  of live groups stays the same), heartbeats arrive, the periodic tick checks worker
  ttl and whether the scheduler is idle (``is_idle``, as the server's idle and GC checks
  do on every tick), and workers join and leave;
* a worker (``WorkerState``) that needs data from 100, then 1,000 peers (50 transfers in
  flight, the default limit, each peer holding more), running unrelated tasks.

Figures are microseconds per event, the best of 7 rounds (the sizes take turns, in
alternating order, so both meet the same load; the best round is the one least disturbed
by the other jobs of a shared machine, which inflate a median). The garbage collector is
frozen after setup and off while a round runs, so that its full collections (whose
cost grows with the heap, whatever the code does) do not blur the figures. This is not
a test: nothing passes or fails on a time, but the state is checked after each phase.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conveyor.core import events as ev
from conveyor.core import worker_events as we
from conveyor.core.instructions import ComputeTask, FreeFunctions, FreeKeys
from conveyor.core.scheduler import SchedulerState
from conveyor.core.types import Key
from conveyor.core.worker import WorkerState

CLIENT = "client-1"
TTL = 60.0
ROUNDS = 7


@dataclass(frozen=True)
class Size:
    """One scale of the benchmark."""

    name: str
    workers: int
    groups: int
    peers: int


def _worker_address(i: int) -> str:
    return f"tcp://10.{i // 250}.{i % 250}.1:40000"


def _group_key(i: int) -> tuple[str, int]:
    return (f"grp-{i}", 0)


class SchedulerBench:
    """A scheduler with ``size.workers`` workers and a client holding ``size.groups``
    live task groups, and the events that keep it in that steady state."""

    def __init__(self, size: Size) -> None:
        self.size = size
        self.s = SchedulerState(worker_ttl=TTL)
        self.now = 0.0
        self.next_group = 0  # the next group to make
        self.oldest = 0  # the oldest live group
        self.run_ids: dict[Key, tuple[str, int]] = {}
        self.next_worker = size.workers
        self.beat = 0
        s = self.s
        for i in range(size.workers):
            s.handle(ev.AddWorker(0.0, _worker_address(i), i, 2, 2**34, f"host-{i % 50}"))
        s.handle(ev.AddClient(0.0, CLIENT))
        out = s.handle(ev.UpdateGraph(0.0, CLIENT, [ev.TaskSpec("base", b"base")], ["base"]))
        (c,) = [i for i in out if isinstance(i, ComputeTask)]
        s.handle(ev.TaskFinished(0.0, c.worker, "base", 1_000, run_id=c.run_id))
        specs = [self._spec(i) for i in range(size.groups)]
        functions = {spec.function: b"fn" for spec in specs if spec.function is not None}
        out = s.handle(
            ev.UpdateGraph(0.0, CLIENT, specs, [spec.key for spec in specs], functions=functions)
        )
        self.next_group = size.groups
        for instr in out:
            if isinstance(instr, ComputeTask):
                s.handle(ev.TaskFinished(0.0, instr.worker, instr.key, 8, run_id=instr.run_id))
        self.check()

    def _spec(self, i: int) -> ev.TaskSpec:
        fid = f"fn-{i}" if i % 2 else None
        return ev.TaskSpec(_group_key(i), b"run", ("base",), order=i, function=fid)

    def check(self) -> None:
        """The steady state: every worker, ``groups`` live groups (and base), idle."""
        s, size = self.s, self.size
        assert len(s.workers) == size.workers, len(s.workers)
        assert len(s.task_groups) == size.groups + 1, len(s.task_groups)
        assert len(s.tasks) == size.groups + 1, len(s.tasks)
        assert all(ts.state == "memory" for ts in s.tasks.values())
        assert s.is_idle()

    # ------------------------------------------------------------------ events

    def heartbeat(self) -> None:
        self.now += 1e-4
        address = _worker_address(self.beat % self.size.workers)
        self.beat += 1
        self.s.handle(ev.WorkerHeartbeat(self.now, address))

    def tick(self) -> None:
        self.now += 1e-4
        assert not self.s.handle(ev.Tick(self.now))

    def is_idle(self) -> None:
        assert self.s.is_idle()

    def submit(self) -> None:
        i = self.next_group
        self.next_group += 1
        spec = self._spec(i)
        functions = {spec.function: b"fn"} if spec.function is not None else {}
        self.now += 1e-4
        out = self.s.handle(ev.UpdateGraph(self.now, CLIENT, [spec], [spec.key], 0, functions))
        (c,) = [i for i in out if isinstance(i, ComputeTask)]
        self.run_ids[spec.key] = (c.worker, c.run_id)

    def finish(self) -> None:
        key = next(iter(self.run_ids))
        worker, run_id = self.run_ids.pop(key)
        self.now += 1e-4
        self.s.handle(ev.TaskFinished(self.now, worker, key, 8, run_id=run_id))

    def release(self) -> None:
        """The oldest group goes: its task is forgotten, and with it the group and
        (every other group) the function it called."""
        i = self.oldest
        self.oldest += 1
        self.now += 1e-4
        out = self.s.handle(ev.ClientReleasesKeys(self.now, CLIENT, [_group_key(i)]))
        assert any(isinstance(x, FreeKeys) for x in out)
        assert any(isinstance(x, FreeFunctions) for x in out) == bool(i % 2)

    def add_worker(self) -> None:
        address = _worker_address(self.next_worker)
        self.next_worker += 1
        self.s.handle(ev.AddWorker(self.now, address, address, 2, 2**34, "host-new"))

    def remove_worker(self) -> None:
        """The worker that joined first among those ``add_worker`` added (it holds
        nothing: only releases and membership changes happen while they live)."""
        self.s.handle(ev.RemoveWorker(self.now, self.churn.pop(0)))

    churn: list[str]


class WorkerBench:
    """A worker needing data from ``size.peers`` peers, with transfers in flight from 50
    of them (the default limit) and more to fetch from each."""

    def __init__(self, size: Size) -> None:
        self.w = WorkerState("tcp://10.255.0.1:40000", 2)
        self.now = 0.0
        self.n = 0
        w = self.w
        for p in range(size.peers):
            peer = _worker_address(p)
            for j in range(2):  # two dependencies per peer: one stays queued in flight
                dep = f"dep-{p}-{j}"
                w.handle(
                    we.ComputeTaskEvent(
                        0.0, f"needs-{p}-{j}", b"run", (0, p, j), {dep: [peer]}, {dep: 40_000_000}
                    )
                )
        self.peers = size.peers
        self.check()

    def check(self) -> None:
        w = self.w
        assert len(w.in_flight_workers) == min(self.peers, w.outgoing_connections)
        assert len(w.data_needed) == self.peers

    def task(self) -> None:
        """An unrelated task comes, runs, and is freed: four events."""
        w = self.w
        key = f"other-{self.n}"
        self.n += 1
        self.now += 1e-4
        w.handle(we.ComputeTaskEvent(self.now, key, b"run", (1, self.n)))
        w.handle(we.ExecuteSuccess(self.now, key, 8, "int", self.now, self.now))
        w.handle(we.FreeKeysEvent(self.now, [key]))


def _per_event(fn: Callable[[], None], n: int, events_per_call: int = 1) -> float:
    """Microseconds per event of ``n`` calls of ``fn``, the garbage collector off."""
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - t0
    finally:
        gc.enable()
    return elapsed / (n * events_per_call) * 1e6


def scheduler_round(b: SchedulerBench, n: int) -> dict[str, float]:
    """One round of every kind of scheduler event: microseconds per event of each."""
    out: dict[str, float] = {}
    out["heartbeat"] = _per_event(b.heartbeat, 10 * n)
    out["tick (worker ttl)"] = _per_event(b.tick, n)
    out["is_idle"] = _per_event(b.is_idle, n)
    out["submit (new group)"] = _per_event(b.submit, n)
    out["task finished"] = _per_event(b.finish, n)
    if b.oldest % 2:  # releases alternate from a group without a function of its own
        b.release()
        b.submit()
        b.finish()
    forget, drop = [], []
    for _ in range(n // 2):  # as many releases as submits: the state stays the same
        forget.append(_per_event(b.release, 1))
        drop.append(_per_event(b.release, 1))
    out["release: forget task+group"] = statistics.fmean(forget)
    out["release: ...+drop function"] = statistics.fmean(drop)
    b.churn = []

    def join() -> None:
        b.churn.append(_worker_address(b.next_worker))
        b.add_worker()

    out["worker joins"] = _per_event(join, n)
    out["worker leaves"] = _per_event(b.remove_worker, n)
    b.check()
    return out


def worker_round(b: WorkerBench, n: int) -> dict[str, float]:
    """One round of unrelated events on a worker that needs data from many peers."""
    out = {"worker event": _per_event(b.task, n, events_per_call=3)}
    b.check()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_scale.py")
    parser.add_argument("--quick", action="store_true", help="10,000 groups, fewer events")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    args = parser.parse_args(argv)
    small = Size("small", 10, 100, 100)
    large = Size("large", 1_000, 10_000 if args.quick else 100_000, 1_000)
    n = 200 if args.quick else 1_000
    benches = {}
    for size in (small, large):
        t0 = time.perf_counter()
        benches[size.name] = (SchedulerBench(size), WorkerBench(size))
        print(
            f"{size.name}: {size.workers} workers, {size.groups:,} groups, "
            f"{size.peers} peers, set up in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
    gc.collect()
    gc.freeze()
    rounds: dict[str, dict[str, list[float]]] = {"small": {}, "large": {}}
    t0 = time.perf_counter()
    order = list(benches.items())
    for r in range(ROUNDS):  # the sizes take turns, so both meet the same machine load
        for name, (sb, wb) in order if r % 2 == 0 else order[::-1]:
            for event, us in {**scheduler_round(sb, n), **worker_round(wb, n)}.items():
                rounds[name].setdefault(event, []).append(us)
    gc.unfreeze()
    print(f"{ROUNDS} rounds in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    print(f"{'event':<30} {'small us':>10} {'large us':>10} {'large/small':>12}")
    for event, values in rounds["small"].items():
        s_us = min(values)
        l_us = min(rounds["large"][event])
        ratio = l_us / s_us if s_us else float("inf")
        rows.append({"event": event, "small_us": s_us, "large_us": l_us, "ratio": ratio})
        print(f"{event:<30} {s_us:>10.2f} {l_us:>10.2f} {ratio:>11.2f}x")
    print(
        f"small: {small.workers} workers, {small.groups} groups, {small.peers} peers; "
        f"large: {large.workers} workers, {large.groups:,} groups, {large.peers} peers"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"small": small.__dict__, "large": large.__dict__, "rows": rows}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
