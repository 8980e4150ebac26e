"""Memory reconciliation (``conveyor.core.housekeeping``) racing every other message on
the seeded simulated network: a sync request or answer may cross task reports, frees,
fetches and releases in any order the links allow. On a healthy cluster it must never
find anything lost (a false "lost" would recompute, or lose scattered data), and
whatever it frees must not be needed; with workers killed, results stay exact."""

from __future__ import annotations

import random

import pytest

from conveyor.testing.simulation import SimCluster, expected_values, random_dag


def run_with_syncs(sim: SimCluster, rng: random.Random, p_sync: float) -> None:
    """Step until quiet, asking a random live worker to sync with probability
    ``p_sync`` before each step."""
    while True:
        if sim.workers and rng.random() < p_sync:
            sim.sync_memory(rng.choice(sorted(sim.workers)))
        if not sim.step():
            break


@pytest.mark.parametrize("seed", range(8))
def test_syncs_on_a_healthy_cluster_find_nothing_lost(seed: int) -> None:
    rng = random.Random(seed)
    tasks = random_dag(rng, 150)
    sim = SimCluster(n_workers=3, nthreads=1 + seed % 2, seed=seed)
    sim.submit("c1", tasks, list(tasks))
    run_with_syncs(sim, rng, 0.15)
    # release half while syncs go on: frees cross the requests
    keys = list(tasks)
    rng.shuffle(keys)
    sim.release("c1", keys[: len(keys) // 2])
    run_with_syncs(sim, rng, 0.3)
    for address in sorted(sim.workers):  # and once more at rest
        sim.sync_memory(address)
    sim.run_until_quiet()
    sim.check_quiet()
    assert len(sim.synced) > 20
    assert all(missing == () for _, missing, _ in sim.synced), seed
    expected = expected_values(tasks)
    for key in keys[len(keys) // 2 :]:
        assert sim.scheduler.tasks[key].state == "memory"
        assert sim.result(key) == expected[key]
    at_rest = sim.synced[-len(sim.workers) :]
    assert all(extra == () for _, _, extra in at_rest)  # at rest, beliefs are the truth


@pytest.mark.parametrize("seed", range(8))
def test_syncs_with_a_worker_killed_keep_results_exact(seed: int) -> None:
    rng = random.Random(100 + seed)
    tasks = random_dag(rng, 120)
    sim = SimCluster(n_workers=3, nthreads=2, seed=seed, nannies=bool(seed % 2))
    sim.submit("c1", tasks, list(tasks))
    sim.kill_at(rng.randrange(5, 150), "sim://worker-1")
    run_with_syncs(sim, rng, 0.2)
    sim.run_until_quiet()
    sim.check_quiet()
    expected = expected_values(tasks)
    for key in tasks:
        assert sim.result(key) == expected[key], (seed, key)


def test_a_sync_repairs_data_lost_behind_the_schedulers_back() -> None:
    tasks = {"a": ("value", 1), "b": ("add", "a"), "c": ("add", "b")}
    sim = SimCluster(n_workers=2, nthreads=1, seed=0)
    sim.submit("c1", tasks, list(tasks))
    sim.run_until_quiet()
    holder = next(iter(sim.scheduler.tasks["c"].who_has)).address
    del sim.data[holder]["c"]  # lost: a disk error, a bug
    sim.workers[holder].tasks["c"].state = "memory"  # its state has not noticed
    sim.sync_memory(holder)
    sim.run_until_quiet()
    sim.check_quiet()
    assert [(a, m) for a, m, _ in sim.synced] == [(holder, ("c",))]
    assert sim.result("c") == expected_values(tasks)["c"]
    assert sim.executions["c"] == 2
