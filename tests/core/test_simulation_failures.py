"""Failures on the seeded simulated network, with both state machines validated after
every event (see :mod:`conveyor.testing.simulation` and :mod:`conveyor.testing.sim_faults`):

* a worker lost at every step of a small graph;
* messages of different workers reaching the scheduler in both orders (each link FIFO);
* a worker that freezes (``SIGSTOP``), is expired by ``worker_ttl`` while the others
  heartbeat, and later wakes up with stale messages;
* a peer that stops answering fetches (frozen, or its data link stalled);
* each of these replays exactly from its seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from conveyor.core import events as ev
from conveyor.core.deaths import UNSERVED_LIMIT
from conveyor.core.instructions import FreeKeys, KeyInMemory, LostData, RefreshWhoHas
from conveyor.core.scheduler import SchedulerState
from conveyor.core.types import Key
from conveyor.testing.replay import replay_digests
from conveyor.testing.sim_faults import FaultySimCluster
from conveyor.testing.simulation import SCHEDULER, SimCluster, expected_values, random_dag

Tasks = dict[Key, tuple[Any, ...]]


def small_graph() -> Tasks:
    """16 tasks: four roots, a fan-out, fan-ins of two and three, and a diamond."""
    tasks: Tasks = {("load", i): ("value", 10 + i) for i in range(4)}
    tasks.update({f"inc-{i}": ("add", ("load", i)) for i in range(4)})
    tasks["mix-0"] = ("add", "inc-0", "inc-1", "inc-2")
    tasks["mix-1"] = ("add", "inc-1", "inc-2", "inc-3")
    tasks["mix-2"] = ("add", "inc-0", "inc-3")
    tasks.update({f"fan-{i}": ("add", f"mix-{i}", ("load", i)) for i in range(3)})
    tasks["total"] = ("add", "fan-0", "fan-1", "fan-2")
    tasks["side"] = ("add", "mix-0", "total")
    return tasks


SMALL = small_graph()
EXPECTED = expected_values(SMALL)


def check_values(sim: SimCluster, tasks: Tasks = SMALL) -> None:
    """Every task is in memory with its exact value (all replicas agreeing)."""
    expected = expected_values(tasks)
    for key in tasks:
        assert sim.scheduler.tasks[key].state == "memory", (sim.seed, key)
        assert sim.result(key) == expected[key], (sim.seed, key)


def check_each_result_told_once(sim: SimCluster, client: str = "c1") -> None:
    """The client hears a key is in memory once, and again only after hearing it lost."""
    told: dict[Key, bool] = {}
    for m in sim.client_messages[client]:
        if isinstance(m, KeyInMemory):
            assert not told.get(m.key), (sim.seed, "told twice", m)
            told[m.key] = True
        elif isinstance(m, LostData):
            assert told.get(m.key), (sim.seed, "lost before it was had", m)
            told[m.key] = False


def release_all_and_check_empty(sim: SimCluster, keys: list[Key], client: str = "c1") -> None:
    sim.release(client, keys)
    sim.run_until_quiet()
    sim.check_quiet()
    assert sim.scheduler.tasks == {}
    for address, data in sim.data.items():
        assert data == {}, (sim.seed, address)
        assert sim.workers[address].tasks == {}, (sim.seed, address)
    for ws in sim.scheduler.workers.values():
        assert (ws.has_what, ws.nbytes, ws.processing) == (set(), 0, {})


def replay_digest(sim: SimCluster) -> tuple[list[str], dict[str, list[Any]]]:
    return [repr(entry) for entry in sim.trace], sim.logs()


# ------------------------------------------------- a worker lost at every step


def kill_at_step(seed: int, step: int, victim: str) -> SimCluster:
    sim = SimCluster(n_workers=3, nthreads=1 + seed % 2, seed=seed)
    sim.submit("c1", SMALL, list(SMALL))
    sim.kill_at(step, victim)
    sim.run_until_quiet()
    return sim


@pytest.mark.parametrize("seed", range(4))
def test_losing_a_worker_at_every_step_of_a_small_graph(seed: int) -> None:
    """Kill a worker before step k, for every step k of an undisturbed run (and after
    it), each worker in turn: the values are exact and nothing leaks or stays behind."""
    clean = SimCluster(n_workers=3, nthreads=1 + seed % 2, seed=seed)
    clean.submit("c1", SMALL, list(SMALL))
    steps = clean.run_until_quiet()
    assert 60 < steps < 200
    workers = sorted(clean.workers)
    reran = lost = 0
    for k in range(steps + 1):
        victim = workers[(k + seed) % 3]
        sim = kill_at_step(seed, k, victim)
        sim.check_quiet()
        assert victim in sim.dead and victim not in sim.scheduler.workers
        check_values(sim)
        check_each_result_told_once(sim)
        reran += any(n > 1 for n in sim.executions.values())
        lost += any(isinstance(m, LostData) for m in sim.client_messages["c1"])
        release_all_and_check_empty(sim, list(SMALL))
    # the deaths hit work under way and results held, not only idle workers
    assert reran > steps // 4 and lost > steps // 4


# ---------------------------------------------- reordering across workers


def test_messages_on_different_links_arrive_in_both_orders_and_each_link_in_order() -> None:
    """``a`` runs on W0; W1 and W2 each fetch it for a task of their own. Over seeds,
    the scheduler hears W1's and W2's reports about the same key ``a`` in both orders,
    and their results in both orders; yet each worker's own reports keep their order."""
    w0, w1, w2 = (f"sim://worker-{i}" for i in range(3))
    tasks: Tasks = {"a": ("value", 4), "b": ("add", "a"), "c": ("add", "a")}
    restrictions: dict[Key, tuple[str, ...]] = {"a": (w0,), "b": (w1,), "c": (w2,)}
    first_copy: set[str] = set()
    first_result: set[str] = set()
    for seed in range(40):
        sim = SimCluster(n_workers=3, nthreads=1, seed=seed)
        sim.submit("c1", tasks, ["a", "b", "c"], restrictions=restrictions)
        sim.run_until_quiet()
        sim.check_quiet()
        check_values(sim, tasks)
        heard = [
            (e.worker, type(e).__name__)
            for who, e in sim.trace
            if who == SCHEDULER and isinstance(e, ev.WorkerAddKeys | ev.TaskFinished)
        ]
        # per link FIFO: a worker reports the copy it fetched before the task it fed
        for w in (w1, w2):
            assert [kind for src, kind in heard if src == w] == ["WorkerAddKeys", "TaskFinished"]
        first_copy.add(next(src for src, kind in heard if kind == "WorkerAddKeys"))
        first_result.add(next(src for src, kind in heard if kind == "TaskFinished" and src != w0))
        assert {w.address for w in sim.scheduler.tasks["a"].who_has} == {w0, w1, w2}
    assert first_copy == {w1, w2}
    assert first_result == {w1, w2}


# ------------------------------------------ heartbeat expiry of a frozen worker

TTL = 1.0


def frozen_worker_run(seed: int) -> tuple[FaultySimCluster, str, float]:
    """Run SMALL; freeze a worker mid-run and wait until the scheduler expires it."""
    rng = random.Random(seed)
    sim = FaultySimCluster(
        n_workers=3,
        nthreads=2,
        seed=seed,
        heartbeat_interval=TTL / 20,
        worker_ttl=TTL,
        fetch_timeout=TTL / 2,
    )
    sim.submit("c1", SMALL, list(SMALL))
    victim = rng.choice(sorted(sim.workers))
    sim.run(rng.randrange(10, 60))
    frozen_at = sim.now
    sim.freeze(victim)
    sim.run_until_quiet()
    return sim, victim, frozen_at


FROZEN_SEEDS = range(16)


@pytest.mark.parametrize("seed", FROZEN_SEEDS)
def test_a_frozen_worker_expires_its_work_finishes_elsewhere_and_waking_changes_nothing(
    seed: int,
) -> None:
    sim, victim, frozen_at = frozen_worker_run(seed)
    # expired by the tick, once worker_ttl passed without a heartbeat; nobody else was
    assert sim.now - frozen_at > TTL
    assert set(sim.scheduler.workers) == set(sim.workers) - {victim}
    assert victim in sim.frozen and not sim.is_quiet()  # its links hold their messages
    check_values(sim)
    check_each_result_told_once(sim)
    told = list(sim.client_messages["c1"])
    # it wakes up: what it sends late is ignored, then the CloseWorker it was sent ends it
    expired_at = len(sim.trace)
    sim.thaw(victim)
    sim.run_until_quiet()
    sim.check_quiet()
    assert victim in sim.dead
    assert ("kill", victim) in sim.trace[expired_at:]
    check_values(sim)
    assert sim.client_messages["c1"] == told  # no duplicate, stale or lost result
    release_all_and_check_empty(sim, list(SMALL))


def test_frozen_worker_runs_exercise_late_messages_and_fetch_timeouts() -> None:
    """Over the seeds above, the frozen worker held data, fetches from it timed out, and
    when it woke it sent results and reports that the scheduler had to ignore."""
    late: set[str] = set()
    held_data = timed_out = late_results = 0
    for seed in FROZEN_SEEDS:
        sim, victim, _ = frozen_worker_run(seed)
        held_data += bool(sim.data[victim])
        timed_out += any(peer == victim for _, peer, _ in sim.timeouts)
        expired_at = len(sim.trace)
        sim.thaw(victim)
        sim.run_until_quiet()
        kinds = {
            type(e).__name__
            for who, e in sim.trace[expired_at:]
            if who == SCHEDULER and victim in (getattr(e, "worker", None), getattr(e, "address", 0))
        }
        late_results += "TaskFinished" in kinds
        late |= kinds
    assert held_data > 10 and timed_out > 5 and late_results > 5
    # (a late WorkerAddKeys shows up in some runs only: set orders of tasks follow
    # their memory addresses, which differ from run to run)
    assert {"TaskFinished", "WorkerHeartbeat", "MissingData"} <= late


# ------------------------------------------------- a peer that stops answering

P, Q, F = "sim://worker-0", "sim://worker-1", "sim://worker-2"


def unanswering_peer_run(seed: int, fault: str) -> tuple[FaultySimCluster, Tasks]:
    """Roots scattered to P and Q; then P stops serving data (``stall``: only its data
    link; ``freeze``: all of it, with no worker-ttl to rescue it) and a graph on the
    roots runs on Q and F."""
    rng = random.Random(seed)
    sim = FaultySimCluster(n_workers=3, nthreads=2, seed=seed, fetch_timeout=0.3)
    roots: dict[Key, int] = {f"root-{i}": rng.randrange(100) for i in range(4)}
    sim.scatter("c1", roots, [P, Q])
    sim.run_until_quiet()
    if fault == "stall":
        sim.stall(P)
    else:
        sim.freeze(P)
    graph: Tasks = {f"inc-{i}": ("add", f"root-{i}") for i in range(4)}
    graph["mix-0"] = ("add", "inc-0", "root-1", "root-2")
    graph["mix-1"] = ("add", "inc-3", "root-3", "root-0")
    graph["total"] = ("add", "mix-0", "mix-1")
    sim.submit("c1", graph, list(graph), restrictions={k: (rng.choice([Q, F]),) for k in graph})
    sim.run_until_quiet()
    return sim, {**{k: ("value", v) for k, v in roots.items()}, **graph}


@pytest.mark.parametrize("fault", ["stall", "freeze"])
def test_fetches_from_a_peer_that_stops_answering_fail_over_to_another_holder(
    fault: str,
) -> None:
    timed_out = 0
    for seed in range(12):
        sim, tasks = unanswering_peer_run(seed, fault)
        # done without P: each fetch from P timed out and went to Q
        check_values(sim, tasks)
        assert all(peer == P for _, peer, _ in sim.timeouts), sim.seed
        timed_out += len(sim.timeouts)
        dropped = {k for _, _, keys in sim.timeouts for k in keys}
        removed = P not in sim.scheduler.workers
        # alive as far as the scheduler knows, unless it failed too many fetches
        assert not removed or len(sim.timeouts) >= UNSERVED_LIMIT, sim.seed
        if not removed:
            # the scheduler stopped counting P's copies that could not be had, and told
            # P to drop them: once P answers again, its data and the scheduler's view
            # agree
            assert not dropped & set(sim.scheduler.has_what([P])[P]), sim.seed
        if fault == "stall":
            sim.unstall(P)
        else:
            sim.thaw(P)
        sim.run_until_quiet()
        sim.check_quiet()
        assert removed or not dropped & set(sim.data[P]), sim.seed
        check_values(sim, tasks)
        release_all_and_check_empty(sim, list(tasks))
    # (the fetchers prefer P or Q by the order of a set of strings: 7 or 14 time-outs)
    assert timed_out >= 5


def stalled_only_holder_run(seed: int) -> FaultySimCluster:
    """P's data link stalls while P holds results no one else has; it answers again a
    while after the first fetch from it timed out."""
    rng = random.Random(seed)
    sim = FaultySimCluster(n_workers=3, nthreads=2, seed=seed, fetch_timeout=0.2)
    sim.submit("c1", SMALL, list(SMALL))
    sim.stall(P)
    while not sim.timeouts:
        assert sim.step(), seed
    sim.run(rng.randrange(0, 100))
    sim.unstall(P)
    sim.run_until_quiet()
    return sim


def test_a_fetch_with_no_other_holder_fails_back_to_the_scheduler() -> None:
    """The fetcher reports the key missing; the scheduler forgets P's copy, tells P to
    drop it, and has the key computed again: the graph still ends with exact values."""
    recomputed = 0
    for seed in range(8):
        sim = stalled_only_holder_run(seed)
        sim.check_quiet()
        check_values(sim)
        # P's data link stalls both ways: its own fetches time out too
        reports = [e for _, e in sim.trace if isinstance(e, ev.MissingData)]
        assert reports and all(P in (e.worker, e.errant_worker) for e in reports), seed
        assert any(e.errant_worker == P for e in reports), seed
        recomputed += any(n > 1 for n in sim.executions.values())
        release_all_and_check_empty(sim, list(SMALL))
    assert recomputed > 4


# ------------------------------------------------------------------- replay


def frozen_digest(seed: int) -> tuple[list[str], dict[str, list[Any]]]:
    sim, victim, _ = frozen_worker_run(seed)
    sim.thaw(victim)
    sim.run_until_quiet()
    return replay_digest(sim)


Digest = tuple[list[str], dict[str, list[Any]]]
SCENARIOS: dict[str, Callable[[int], Digest]] = {
    "kill-at-step": lambda seed: replay_digest(kill_at_step(seed, 40, "sim://worker-1")),
    "frozen-expiry": frozen_digest,
    "stalled-peer": lambda seed: replay_digest(unanswering_peer_run(seed, "stall")[0]),
    "stalled-only-holder": lambda seed: replay_digest(stalled_only_holder_run(seed)),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_failure_scenarios_replay_exactly(scenario: str) -> None:
    run = SCENARIOS[scenario]
    trace_1, logs_1 = run(3)
    trace_2, logs_2 = run(3)
    assert trace_1 == trace_2
    assert logs_1 == logs_2
    assert trace_1 != run(4)[0]  # and the seed is what decides


def test_without_faults_the_faulty_cluster_is_the_plain_one() -> None:
    """The hooks change nothing when no fault or timer is configured: same trace."""
    tasks = random_dag(random.Random(2), 100)
    traces = []
    for cls in (SimCluster, FaultySimCluster):
        sim = cls(n_workers=3, nthreads=2, seed=2)
        sim.submit("c1", tasks, list(tasks))
        sim.kill_at(150, "sim://worker-0")
        sim.run_until_quiet()
        traces.append(replay_digest(sim))
    assert traces[0] == traces[1]


REPLAY_SCRIPT = """
import hashlib, random
from conveyor.testing.sim_faults import FaultySimCluster
from conveyor.testing.simulation import random_dag
rng = random.Random(5)
tasks = random_dag(rng, 40)
sim = FaultySimCluster(3, 2, 5, heartbeat_interval=0.05, worker_ttl=1.0, fetch_timeout=0.5)
sim.submit("c1", tasks, list(tasks))
sim.run(60)
sim.freeze("sim://worker-1")
sim.stall("sim://worker-2")
sim.run(400)
sim.unstall("sim://worker-2")
sim.run_until_quiet()
sim.thaw("sim://worker-1")
sim.run_until_quiet()
sim.check_quiet()
assert sim.timeouts and "sim://worker-1" in sim.dead
print(hashlib.sha256(repr((sim.trace, sim.logs())).encode()).hexdigest())
"""


def test_a_faulty_seed_replays_exactly_in_another_interpreter() -> None:
    digests = replay_digests(REPLAY_SCRIPT, 321)
    assert len(digests) == 1
    assert len(digests.pop()) == 64


# ------------------------------------------------------------ harness details


def test_worker_ttl_without_heartbeats_is_refused() -> None:
    with pytest.raises(ValueError, match="heartbeat_interval"):
        FaultySimCluster(worker_ttl=1.0)


def test_a_frozen_worker_holds_its_links_and_executions_until_thawed() -> None:
    sim = FaultySimCluster(n_workers=1, nthreads=1, seed=0)
    w = "sim://worker-0"
    sim.freeze(w)
    sim.submit("c1", {"a": ("value", 1)}, ["a"])
    sim.run_until_quiet()
    assert sim.links[(SCHEDULER, w, "ctl")] and sim.executions == {}
    sim.thaw(w)
    while not sim.running:
        assert sim.step()
    sim.freeze(w)
    assert sim.run_until_quiet() == 0 and sim.running  # its thread does not go on either
    sim.thaw(w)
    sim.run_until_quiet()
    sim.check_quiet()
    assert sim.result("a") == 1


# ------------------------------------------- state-machine regressions found here

W1, W2, W3 = "tcp://w1", "tcp://w2", "tcp://w3"


def x_in_memory_on_w1() -> SchedulerState:
    s = SchedulerState(validate=True)
    for w in (W1, W2, W3):
        s.handle(ev.AddWorker(0.0, w, w, 1, 2**30, "host"))
    s.handle(ev.UpdateGraph(0.1, "c", [ev.TaskSpec("x", b"x", (), workers=(W1,))], ["x"]))
    s.handle(ev.TaskFinished(0.2, W1, "x", 8, run_id=s.tasks["x"].run_id))
    return s


def test_a_missing_data_report_from_a_removed_worker_is_ignored() -> None:
    """A worker expired by worker-ttl wakes up, its fetch from W1 times out at once, and
    it reports the key missing: x must not be declared lost (W1 has it)."""
    s = x_in_memory_on_w1()
    s.handle(ev.RemoveWorker(0.3, W2, "no heartbeat"))
    assert s.handle(ev.MissingData(0.4, W2, "x", W1)) == []
    assert s.tasks["x"].state == "memory" and s.who_has(["x"]) == {"x": [W1]}


def test_a_holder_reported_missing_is_told_to_drop_its_copy() -> None:
    """A fetch from W1 timed out though W1 holds x: the scheduler stops counting that copy
    and tells W1 to drop it, or W1 would keep it, unknown, for ever."""
    s = x_in_memory_on_w1()
    s.handle(ev.WorkerAddKeys(0.25, W3, {"x": 8}))
    out = s.handle(ev.MissingData(0.4, W2, "x", W1))
    assert out == [FreeKeys(W1, ["x"]), RefreshWhoHas(W2, {"x": [W3]})]
    assert s.who_has(["x"]) == {"x": [W3]}


@pytest.mark.parametrize("seed", range(4))
def test_a_peer_that_never_serves_data_is_removed_and_the_graph_completes(seed: int) -> None:
    """P answers the scheduler but its data link never delivers: each key only P holds
    would be recomputed on P and fetched from it again without end; after
    UNSERVED_LIMIT failed fetches the scheduler removes P and tells it to close."""
    sim = FaultySimCluster(n_workers=3, nthreads=2, seed=seed, fetch_timeout=0.2)
    sim.submit("c1", SMALL, list(SMALL))
    sim.stall(P)  # for good
    sim.run_until_quiet()
    assert P not in sim.scheduler.workers and P in sim.dead
    assert sum(peer == P for _, peer, _ in sim.timeouts) >= UNSERVED_LIMIT
    check_values(sim)
    sim.unstall(P)  # what it sent arrives, to no one
    release_all_and_check_empty(sim, list(SMALL))
