"""The bookkeeping that keeps failure handling O(1) per event as a cluster grows: the
worker-ttl order, the count behind ``is_idle``, the placement ring's O(1) removal, the
reverse links between task groups, the holders of each shared function, and the peers a
worker may start a transfer from. Every state here validates its invariants (which check
that bookkeeping against a scan) after every event."""

from __future__ import annotations

import math
import random

import pytest

from conveyor.core import events as ev
from conveyor.core import worker_events as we
from conveyor.core.instructions import (
    CloseWorker,
    ComputeTask,
    FreeFunctions,
    Instruction,
)
from conveyor.core.placement import PLACEMENT_SAMPLE
from conveyor.core.records import WorkerInfo
from conveyor.core.ring import Ring
from conveyor.core.scheduler import SchedulerState
from conveyor.core.types import Key
from conveyor.core.worker import WorkerState

C = "client-1"


def address(i: int) -> str:
    return f"tcp://10.0.{i // 200}.{i % 200}:1000"


def join(s: SchedulerState, addr: str, now: float = 0.0, nthreads: int = 1) -> None:
    s.handle(ev.AddWorker(now, addr, addr, nthreads, 2**30, "host"))


def computes(out: list[Instruction]) -> list[ComputeTask]:
    return [i for i in out if isinstance(i, ComputeTask)]


def submit(
    s: SchedulerState, key: str, *deps: str, now: float = 0.0, **kw: object
) -> list[Instruction]:
    spec = ev.TaskSpec(key, b"run", tuple(deps), **kw)  # type: ignore[arg-type]
    return s.handle(ev.UpdateGraph(now, C, [spec], [key], functions={"f": b"fn"}))


# ---------------------------------------------------------------- worker ttl


def test_workers_that_are_heard_from_outlive_the_ttl_and_silent_ones_do_not() -> None:
    """20 workers; the even ones heartbeat every second, worker 1 only finishes a task
    (a sign of life too), the other odd ones are silent. After each tick the workers
    left are exactly those heard from within the ttl, and the silent ones are told to
    close in the order they joined."""
    s = SchedulerState(validate=True, worker_ttl=10.0)
    workers = [address(i) for i in range(20)]
    for w in workers:
        join(s, w)
    s.handle(ev.AddClient(0.0, C))
    (c,) = computes(submit(s, "x", workers=(workers[1],)))
    heard = dict.fromkeys(workers, 0.0)
    closed: list[str] = []
    for t in range(1, 25):
        now = float(t)
        for w in workers[::2]:
            s.handle(ev.WorkerHeartbeat(now, w))
            heard[w] = now
        if t == 8:
            s.handle(ev.TaskFinished(now, workers[1], "x", 8, run_id=c.run_id))
            heard[workers[1]] = now
        out = s.handle(ev.Tick(now + 0.5))
        closed += [i.worker for i in out if isinstance(i, CloseWorker)]
        alive = {w for w, h in heard.items() if now + 0.5 - h <= 10.0}
        assert set(s.workers) == alive, t
    silent = [w for i, w in enumerate(workers) if i % 2 and i != 1]
    assert closed == [*silent, workers[1]]  # at 10.5 in join order; worker 1 at 18.5
    assert set(s.workers) == set(workers[::2])


def test_the_ttl_holds_exactly_when_the_clock_steps_back() -> None:
    """The wall clock may step back: a heartbeat stamped earlier than one before it
    still counts for what it says, and the next tick finds exactly the expired."""
    a, b, c, d = (address(i) for i in range(4))
    s = SchedulerState(validate=True, worker_ttl=10.0)
    for w in (a, b, c, d):
        join(s, w, now=100.0)
    s.handle(ev.WorkerHeartbeat(106.0, a))
    s.handle(ev.WorkerHeartbeat(103.0, b))  # the clock went back 3 s
    s.handle(ev.WorkerHeartbeat(104.0, d))
    out = s.handle(ev.Tick(113.5))
    # c (13.5 s) and b (10.5 s) expired; d (9.5 s) and a (7.5 s) did not
    assert [i.worker for i in out if isinstance(i, CloseWorker)] == [b, c]  # join order
    assert set(s.workers) == {a, d}
    assert [i.worker for i in s.handle(ev.Tick(114.5)) if isinstance(i, CloseWorker)] == [d]
    assert set(s.workers) == {a}


def test_a_worker_that_registers_again_starts_a_fresh_ttl() -> None:
    a, b = address(0), address(1)
    s = SchedulerState(validate=True, worker_ttl=10.0)
    join(s, a, now=0.0)
    join(s, b, now=0.0)
    join(s, a, now=8.0)  # re-registered: a new record, heard from at 8
    assert s.handle(ev.Tick(9.0)) == []
    out = s.handle(ev.Tick(12.0))
    assert [i.worker for i in out if isinstance(i, CloseWorker)] == [b]
    assert set(s.workers) == {a}


# ---------------------------------------------------------------- is_idle


def test_is_idle_follows_tasks_through_a_worker_death_and_secession() -> None:
    w1, w2 = address(1), address(2)
    s = SchedulerState(validate=True)
    join(s, w1)
    join(s, w2)
    out = computes(submit(s, "x") + submit(s, "y"))
    assert not s.is_idle() and s.nprocessing == 2
    on = {c.key: c for c in out}
    s.handle(ev.RemoveWorker(1.0, on["x"].worker, "died"))  # x moves to the other
    assert not s.is_idle() and s.nprocessing == 2
    assert len(s.workers) == 1
    (ws,) = s.workers.values()
    ids = {ts.key: ts.run_id for ts in ws.processing}
    s.handle(ev.TaskLongRunning(2.0, ws.address, "y", ids["y"]))  # seceded, still running
    assert not s.is_idle()
    s.handle(ev.TaskFinished(3.0, ws.address, "x", 8, run_id=ids["x"]))
    assert not s.is_idle() and s.nprocessing == 1
    s.handle(ev.TaskFinished(4.0, ws.address, "y", 8, run_id=ids["y"]))
    assert s.is_idle() and s.nprocessing == 0


# ------------------------------------------------------------ placement ring


def test_the_ring_appends_and_removes_in_constant_time_keeping_its_index() -> None:
    ring = Ring()
    workers = [WorkerInfo(address(i), i, 1, 1, "host", 0.0) for i in range(5)]
    for ws in workers:
        ring.append(ws)
    ring.remove(workers[1])  # the last member takes its place
    assert [ws.name for ws in ring] == [0, 4, 2, 3] and ring[1] is workers[4]
    ring.remove(workers[3])  # the last member itself
    assert [ws.name for ws in ring] == [0, 4, 2] and len(ring) == 3 and ring.consistent()
    with pytest.raises(ValueError, match="not in the ring"):
        ring.remove(workers[3])
    with pytest.raises(ValueError, match="in the ring already"):
        ring.append(workers[0])
    impostor = WorkerInfo(address(0), 0, 1, 1, "host", 0.0)  # same address, other record
    with pytest.raises(ValueError, match="not in the ring"):
        ring.remove(impostor)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_placement_keeps_working_as_workers_leave_in_any_order(seed: int) -> None:
    """Every worker busy, so lone tasks are placed by weighing a window of the ring.
    As workers leave in a random order, each window holds only live workers, as many
    as it can, and successive windows still cover every worker."""
    rng = random.Random(seed)
    s = SchedulerState(validate=True)
    workers = [address(i) for i in range(3 * PLACEMENT_SAMPLE + 7)]
    for w in workers:
        join(s, w)
    for i in range(len(workers)):  # one task per worker: none is idle any more
        submit(s, f"busy-{i}")
    assert not s.idle
    weighed: list[str] = []
    start_time = s._start_time

    def counting(ts: object, ws: WorkerInfo) -> float:
        weighed.append(ws.address)
        return start_time(ts, ws)  # type: ignore[arg-type]

    s._start_time = counting  # type: ignore[method-assign]
    leaving = list(workers)
    rng.shuffle(leaving)
    probe = 0
    for gone in leaving[:-1]:
        s.handle(ev.RemoveWorker(1.0, gone, "died"))
        live = set(s.workers)
        seen: set[str] = set()
        for _ in range(math.ceil(len(live) / PLACEMENT_SAMPLE)):
            weighed.clear()
            probe += 1
            key = f"probe{probe}"  # a group of its own: never root-ish
            (c,) = computes(submit(s, key))
            assert c.worker in live and set(weighed) <= live
            assert len(weighed) == min(PLACEMENT_SAMPLE, len(live))
            seen.update(weighed)
            s.handle(ev.TaskFinished(2.0, c.worker, key, 8, run_id=c.run_id))
            s.handle(ev.ClientReleasesKeys(2.0, C, [key]))
        assert seen == live
    assert set(s.workers) == {leaving[-1]}


# ---------------------------------------------------------------- task groups


def test_forgetting_groups_unlinks_them_from_the_groups_they_depended_on() -> None:
    """A long-lived ``base`` result read by group after group: each group is linked
    to base while it lives and unlinked when forgotten, so base's links do not grow."""
    s = SchedulerState(validate=True)
    join(s, address(0))
    (c,) = computes(submit(s, "base"))
    s.handle(ev.TaskFinished(1.0, c.worker, "base", 8, run_id=c.run_id))
    base = s.task_groups["base"]
    for i in range(50):
        key = f"use{i}-1"
        (c,) = computes(submit(s, key, "base"))
        group = s.tasks[key].group
        assert base.dependents == {group} and group.dependencies == {base}
        s.handle(ev.TaskFinished(2.0, c.worker, key, 8, run_id=c.run_id))
        s.handle(ev.ClientReleasesKeys(3.0, C, [key]))
        assert group.name not in s.task_groups
        assert base.dependents == set()
    # a chain of groups: the middle one stays linked both ways until it goes
    submit(s, "a-1")
    submit(s, "b-1", "a-1")
    submit(s, "c-1", "b-1")
    a, b, cg = (s.task_groups[n] for n in ("a", "b", "c"))
    assert (a.dependents, b.dependents, b.dependencies) == ({b}, {cg}, {a})
    s.handle(ev.ClientReleasesKeys(4.0, C, ["c-1"]))
    assert "c" not in s.task_groups and b.dependents == set() and a.dependents == {b}


# ----------------------------------------------------------- shared functions


def test_a_dropped_function_is_freed_only_where_it_still_is() -> None:
    """``f`` went to w1 and w2; w1 left and came back (without ``f``): dropping ``f``
    frees it on w2 alone."""
    w1, w2 = address(1), address(2)
    s = SchedulerState(validate=True)
    join(s, w1)
    join(s, w2)
    (x,) = computes(submit(s, "x", function="f", workers=(w1,)))
    (y,) = computes(submit(s, "y", function="f", workers=(w2,)))
    assert x.blobs == {"f": b"fn"} and y.blobs == {"f": b"fn"}
    s.handle(ev.RemoveWorker(1.0, w1, "died"))
    s.handle(ev.ClientReleasesKeys(2.0, C, ["x"]))
    join(s, w1, now=3.0)
    s.handle(ev.TaskFinished(4.0, w2, "y", 8, run_id=y.run_id))
    out = s.handle(ev.ClientReleasesKeys(5.0, C, ["y"]))
    assert [i for i in out if isinstance(i, FreeFunctions)] == [FreeFunctions(w2, ["f"])]
    assert not s.functions


def test_a_function_sent_again_to_a_returning_worker_is_freed_there() -> None:
    w1 = address(1)
    s = SchedulerState(validate=True)
    join(s, w1)
    (x,) = computes(submit(s, "x", function="f", workers=(w1,)))
    assert x.blobs == {"f": b"fn"}
    s.handle(ev.RemoveWorker(1.0, w1, "died"))
    assert s.tasks["x"].state == "no-worker"
    join(s, w1, now=2.0)
    s.handle(ev.AddWorker(2.0, w1, w1, 1, 2**30, "host"))  # and once more
    (again,) = [t for t in s.workers[w1].processing]
    assert s.functions["f"].holders == {w1: s.workers[w1]}
    s.handle(ev.TaskFinished(3.0, w1, "x", 8, run_id=again.run_id))
    out = s.handle(ev.ClientReleasesKeys(4.0, C, ["x"]))
    assert [i for i in out if isinstance(i, FreeFunctions)] == [FreeFunctions(w1, ["f"])]


# ---------------------------------------------------------- worker transfers


def test_a_worker_starts_transfers_from_peers_in_turn() -> None:
    """Two connections, four peers holding two needed keys each (one key a transfer):
    a freed connection goes to the peer that has waited longest, not back to the one
    that just finished."""
    me, peers = "tcp://10.9.9.9:1000", [address(i) for i in range(4)]
    w = WorkerState(me, 1, validate=True, outgoing_connections=2)
    who_has: dict[Key, list[str]] = {
        f"d{p}-{j}": [peer] for p, peer in enumerate(peers) for j in range(2)
    }
    nbytes: dict[Key, int] = dict.fromkeys(who_has, 60)
    event = we.ComputeTaskEvent(0.0, "t", b"run", (0,), who_has, nbytes)
    w.transfer_message_bytes_limit = 100
    out = w.handle(event)
    assert [(i.worker, i.keys) for i in out if isinstance(i, we.GatherDep)] == [
        (peers[0], ["d0-0"]),
        (peers[1], ["d1-0"]),
    ]
    assert list(w.fetchable_peers) == peers[2:]

    def done(p: int, key: str) -> list[tuple[str, list[Key]]]:
        out = w.handle(we.GatherDepDone(1.0, peers[p], {key: 60}))
        return [(i.worker, i.keys) for i in out if isinstance(i, we.GatherDep)]

    assert done(0, "d0-0") == [(peers[2], ["d2-0"])]
    assert done(1, "d1-0") == [(peers[3], ["d3-0"])]
    assert done(2, "d2-0") == [(peers[0], ["d0-1"])]
    assert done(3, "d3-0") == [(peers[1], ["d1-1"])]
    assert done(0, "d0-1") == [(peers[2], ["d2-1"])]
    assert list(w.fetchable_peers) == [peers[3]]
