"""The scheduler and several workers together on a seeded simulated network.

Each run validates both state machines after every event and checks each worker's data
against its state after every step (see :mod:`conveyor.testing.simulation`). A failing
seed replays exactly: rerun the test with the same seed (and, across interpreters, the
same ``PYTHONHASHSEED``).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from conveyor.core.instructions import KeyErred, KeyInMemory, KeysCancelled, LostData
from conveyor.core.types import Key
from conveyor.testing.replay import replay_digests
from conveyor.testing.simulation import (
    SimCluster,
    SimStuck,
    dependencies_of,
    expected_values,
    random_dag,
)

SEEDS = range(20)


def check_results(sim: SimCluster, tasks: dict[Key, tuple[Any, ...]], wanted: list[Key]) -> None:
    expected = expected_values(tasks)
    for key in wanted:
        ts = sim.scheduler.tasks[key]
        if key in expected:
            assert ts.state == "memory", (sim.seed, key, ts)
            assert sim.result(key) == expected[key], (sim.seed, key)
        else:
            assert ts.state == "erred", (sim.seed, key, ts)


def release_all_and_check_empty(sim: SimCluster, client: str, keys: list[Key]) -> None:
    sim.release(client, keys)
    sim.run_until_quiet()
    sim.check_quiet()
    assert sim.scheduler.tasks == {}
    assert sim.scheduler.task_groups == {}
    for address, data in sim.data.items():
        assert data == {}, address
        assert sim.workers[address].tasks == {}, address
    for ws in sim.scheduler.workers.values():
        assert (ws.has_what, ws.nbytes, ws.processing) == (set(), 0, {})
    # shared blobs (functions, argument chunks) go with the last task using them
    assert not sim.scheduler.functions
    assert all(not held for held in sim.worker_blobs.values())


# ------------------------------------------------------------------ the harness


def test_simple_chain_values() -> None:
    sim = SimCluster(n_workers=2, nthreads=1, seed=1)
    tasks = {"a": ("value", 10), "b": ("add", "a"), "c": ("add", "a", "b")}
    sim.submit("c1", tasks, ["c"])
    sim.run_until_quiet()
    sim.check_quiet()
    assert sim.result("c") == 1 + 10 + 11
    assert sim.client_messages["c1"] == [
        KeyInMemory("c1", "c", "int", [ws.address for ws in sim.scheduler.tasks["c"].who_has])
    ]
    assert sim.executions == {"a": 1, "b": 1, "c": 1}


def test_harness_catches_a_wrong_value() -> None:
    sim = SimCluster(n_workers=2, nthreads=1, seed=1)
    sim.submit("c1", {"a": ("value", 1), "b": ("add", "a")}, ["b"])
    sim.run_until_quiet()
    holder = next(iter(sim.scheduler.tasks["b"].who_has)).address
    sim.data[holder]["b"] = 999
    with pytest.raises(AssertionError):
        check_results(sim, {"a": ("value", 1), "b": ("add", "a")}, ["b"])


def test_harness_catches_leaked_worker_data() -> None:
    sim = SimCluster(n_workers=1, nthreads=1, seed=1)
    sim.submit("c1", {"a": ("value", 1)}, ["a"])
    sim.run_until_quiet()
    sim.data["sim://worker-0"]["stray"] = 1
    with pytest.raises(AssertionError, match="stray"):
        sim.check(everything=True)


def test_harness_reports_a_stuck_cluster() -> None:
    # restricted to a worker that never comes: quiet, but not done
    sim = SimCluster(n_workers=1, nthreads=1, seed=1)
    sim.submit("c1", {"a": ("value", 1)}, ["a"], restrictions={"a": ("sim://nobody",)})
    sim.run_until_quiet()
    with pytest.raises(SimStuck):
        sim.check_quiet()
    sim.add_worker("sim://nobody", 1)
    sim.run_until_quiet()
    sim.check_quiet()
    assert sim.result("a") == 1


def test_random_dag_shape() -> None:
    tasks = random_dag(random.Random(0), 300)
    assert len(tasks) == 300
    seen: set[Key] = set()
    for key, spec in tasks.items():
        assert set(dependencies_of(spec)) <= seen
        seen.add(key)
    assert any(isinstance(k, tuple) for k in tasks)
    assert any(isinstance(k, str) for k in tasks)
    assert sum(1 for s in tasks.values() if s[0] == "value") > 30


# ---------------------------------------------------------- random task graphs


@pytest.mark.parametrize("seed", SEEDS)
def test_random_dag_completes_with_right_values(seed: int) -> None:
    tasks = random_dag(random.Random(seed), 300)
    keys = list(tasks)
    sim = SimCluster(n_workers=3, nthreads=2, seed=seed)
    sim.submit("c1", tasks, keys)
    sim.run_until_quiet()
    sim.check_quiet()
    check_results(sim, tasks, keys)
    # nothing died, so nothing ran twice
    assert set(sim.executions.values()) == {1}
    assert len(sim.executions) == 300
    assert len(sim.client_messages["c1"]) == 300
    assert all(isinstance(m, KeyInMemory) for m in sim.client_messages["c1"])
    # every worker got work
    assert all(ws.log for ws in sim.workers.values())


@pytest.mark.parametrize("nannies", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_random_dag_survives_a_worker_death(seed: int, nannies: bool) -> None:
    rng = random.Random(seed)
    tasks = random_dag(rng, 300)
    keys = list(tasks)
    sim = SimCluster(n_workers=3, nthreads=2, seed=seed, nannies=nannies)
    sim.submit("c1", tasks, keys)
    sim.run(rng.randrange(100, 1000))
    victim = "sim://worker-1"
    assert not sim.is_quiet()
    victim_info = sim.scheduler.workers[victim]
    assert victim_info.has_what or victim_info.processing
    sim.kill_worker(victim)
    sim.run_until_quiet()
    sim.check_quiet()
    assert victim not in sim.scheduler.workers
    check_results(sim, tasks, keys)
    # after each result lost with the worker the client hears of it again
    messages = sim.client_messages["c1"]
    for i, m in enumerate(messages):
        if isinstance(m, LostData):
            assert any(isinstance(n, KeyInMemory) and n.key == m.key for n in messages[i + 1 :]), m


@pytest.mark.parametrize("seed", range(5))
def test_releasing_everything_leaves_nothing(seed: int) -> None:
    rng = random.Random(seed)
    tasks = random_dag(rng, 300)
    keys = list(tasks)
    sim = SimCluster(n_workers=3, nthreads=2, seed=seed)
    sim.submit("c1", tasks, keys)
    sim.kill_at(rng.randrange(100, 1000), "sim://worker-2")
    sim.run_until_quiet()
    sim.check_quiet()
    release_all_and_check_empty(sim, "c1", keys)


@pytest.mark.parametrize("seed", range(5))
def test_releasing_mid_run_leaves_nothing(seed: int) -> None:
    rng = random.Random(seed)
    tasks = random_dag(rng, 200)
    keys = list(tasks)
    sim = SimCluster(n_workers=3, nthreads=2, seed=seed)
    sim.submit("c1", tasks, keys)
    sim.run(rng.randrange(50, 500))
    assert not sim.is_quiet()
    release_all_and_check_empty(sim, "c1", keys)


def test_only_final_results_stay_in_memory() -> None:
    tasks = random_dag(random.Random(3), 200)
    wanted = list(tasks)[-5:]
    sim = SimCluster(n_workers=3, nthreads=2, seed=3)
    sim.submit("c1", tasks, wanted)
    sim.run_until_quiet()
    sim.check_quiet()
    check_results(sim, tasks, wanted)
    in_memory = {k for k, ts in sim.scheduler.tasks.items() if ts.state == "memory"}
    assert in_memory == set(wanted)
    held = set().union(*(set(d) for d in sim.data.values()))
    assert held == set(wanted)
    release_all_and_check_empty(sim, "c1", wanted)


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize("seed", range(5))
def test_errors_propagate_to_dependents(seed: int) -> None:
    tasks = random_dag(random.Random(seed), 200, fail_fraction=0.03)
    keys = list(tasks)
    failing = {k for k, s in tasks.items() if s[0] == "fail"}
    assert failing
    sim = SimCluster(n_workers=3, nthreads=2, seed=seed)
    sim.submit("c1", tasks, keys)
    sim.run_until_quiet()
    sim.check_quiet()
    check_results(sim, tasks, keys)
    errors = [m for m in sim.client_messages["c1"] if isinstance(m, KeyErred)]
    assert len(errors) == 200 - len(expected_values(tasks))
    for m in errors:
        blame = sim.scheduler.tasks[m.key].exception_blame
        assert blame is not None and blame.key in failing
        assert m.exception_text == f"RuntimeError: {tasks[blame.key][1]}"
    release_all_and_check_empty(sim, "c1", keys)


@pytest.mark.parametrize("seed", range(5))
def test_flaky_tasks_with_retries_succeed(seed: int) -> None:
    rng = random.Random(seed)
    tasks = random_dag(rng, 150)
    flaky = [k for k, s in tasks.items() if s[0] == "add"][::10]
    for k in flaky:
        tasks[k] = ("flaky", 2, *dependencies_of(tasks[k]))
    keys = list(tasks)
    sim = SimCluster(n_workers=3, nthreads=2, seed=seed)
    sim.submit("c1", tasks, keys, retries={k: 2 for k in flaky})
    sim.run_until_quiet()
    sim.check_quiet()
    unflaky = {k: ("add", *s[2:]) if s[0] == "flaky" else s for k, s in tasks.items()}
    expected = expected_values(unflaky)
    assert len(expected) == 150
    for k in keys:
        assert sim.result(k) == expected[k]
    assert all(sim.executions[k] == 3 for k in flaky)


def test_every_worker_dying_while_running_a_task_gives_killed_worker() -> None:
    sim = SimCluster(n_workers=3, nthreads=1, seed=0, scheduler_kwargs={"allowed_failures": 1})
    sim.submit("c1", {"bomb": ("value", 1)}, ["bomb"])
    for _ in range(2):
        # step until the task runs somewhere, then kill that worker
        while not sim.running:
            assert sim.step()
        ((address, _),) = list(sim.running)
        sim.kill_worker(address)
    sim.run_until_quiet()
    sim.check_quiet()
    assert sim.scheduler.tasks["bomb"].state == "erred"
    (msg,) = sim.client_messages["c1"]
    assert isinstance(msg, KeyErred)
    assert msg.exception_text.startswith("KilledWorker")


def test_all_holders_of_scattered_data_dying_errs_its_dependents() -> None:
    sim = SimCluster(n_workers=2, nthreads=1, seed=0)
    sim.scatter("c1", {"d": 5}, ["sim://worker-0"])
    sim.run_until_quiet()
    sim.kill_worker("sim://worker-0")
    sim.submit("c1", {"e": ("add", "d")}, ["e"])
    sim.run_until_quiet()
    sim.check_quiet()
    assert sim.scheduler.tasks["d"].state == "erred"
    assert sim.scheduler.tasks["e"].state == "erred"
    assert LostData("c1", "d") in sim.client_messages["c1"]


# ------------------------------------------------------------------ mixed


@pytest.mark.parametrize("seed", range(10))
def test_chaos(seed: int) -> None:
    """Scatter, restrictions, partial release, cancel, a late worker and deaths at once."""
    rng = random.Random(seed)
    nworkers = rng.randint(2, 4)
    sim = SimCluster(
        n_workers=nworkers,
        nthreads=rng.randint(1, 3),
        seed=seed,
        worker_kwargs={"transfer_message_bytes_limit": rng.choice([150, 250, 10**6])},
        scheduler_kwargs={"worker_saturation": rng.choice([1.0, 1.1, float("inf")])},
        nannies=bool(seed % 2),  # half the runs have nannies reporting the deaths
    )
    victims = rng.sample(sorted(sim.workers), rng.randint(1, nworkers - 1))
    survivors = [w for w in sorted(sim.workers) if w not in victims]
    scattered = {f"scat-{i}": rng.randrange(100) for i in range(3)}
    sim.scatter("c1", scattered, survivors[:1])
    tasks = random_dag(rng, 120)
    for key in list(tasks)[10::15]:
        tasks[key] = (*tasks[key], rng.choice(list(scattered)))
    restrictions = {k: (rng.choice([*survivors, "sim://late"]),) for k in list(tasks)[::20]}
    keys = list(tasks)
    sim.submit("c1", tasks, keys, restrictions=restrictions)
    for victim in victims:
        sim.kill_at(rng.randrange(1, 600), victim)
    sim.run(rng.randrange(1, 400))
    released = rng.sample(keys, 30)
    sim.release("c1", released)
    cancelled = [k for k in rng.sample(keys, 3) if k not in released]
    sim.cancel("c1", cancelled)
    sim.add_worker("sim://late", 2)
    sim.run_until_quiet()
    sim.check_quiet()
    kept = [k for k in keys if k not in released and k not in cancelled]
    spec_of = {**tasks, **{k: ("value", v) for k, v in scattered.items()}}
    check_results(sim, spec_of, kept)
    got = [m for m in sim.client_messages["c1"] if isinstance(m, KeysCancelled)]
    assert sorted((k for m in got for k in m.keys), key=repr) == sorted(cancelled, key=repr)
    release_all_and_check_empty(sim, "c1", kept + list(scattered))


# ------------------------------------------------------------------- replay


def run_logged(seed: int) -> tuple[list[str], dict[str, list[Any]]]:
    rng = random.Random(seed)
    tasks = random_dag(rng, 300)
    sim = SimCluster(n_workers=3, nthreads=2, seed=seed)
    sim.submit("c1", tasks, list(tasks))
    sim.kill_at(rng.randrange(100, 1000), "sim://worker-1")
    sim.run_until_quiet()
    return [repr(entry) for entry in sim.trace], sim.logs()


@pytest.mark.parametrize("seed", [0, 7])
def test_a_seed_replays_exactly(seed: int) -> None:
    trace_1, logs_1 = run_logged(seed)
    trace_2, logs_2 = run_logged(seed)
    assert trace_1 == trace_2
    assert logs_1 == logs_2
    assert len(logs_1["scheduler"]) > 900


def test_different_seeds_interleave_differently() -> None:
    trace_1, logs_1 = run_logged(0)
    trace_2, logs_2 = run_logged(1)
    assert trace_1 != trace_2
    assert logs_1 != logs_2


REPLAY_SCRIPT = """
import hashlib, random
from conveyor.testing.simulation import SimCluster, random_dag
rng = random.Random(5)
tasks = random_dag(rng, 100)
sim = SimCluster(n_workers=3, nthreads=2, seed=5)
sim.submit("c1", tasks, list(tasks))
sim.kill_at(rng.randrange(50, 300), "sim://worker-0")
sim.run_until_quiet()
print(hashlib.sha256(repr((sim.trace, sim.logs())).encode()).hexdigest())
"""


def test_a_seed_replays_exactly_in_another_interpreter() -> None:
    # both state machines iterate sets of strings, so the hash seed must match too
    digests = replay_digests(REPLAY_SCRIPT, 123)
    assert len(digests) == 1
    assert len(digests.pop()) == 64


# ------------------------------------------------------------------ batches


@pytest.mark.parametrize("seed", range(6))
def test_wanted_batches_of_one_group_take_the_bulk_path(seed: int) -> None:
    """A map-like graph, every task wanted: roots in one group, then a group sharing one
    dependency, then one task per row depending on a root; some keys sent twice."""
    rng = random.Random(seed)
    tasks: dict[Key, tuple[Any, ...]] = {("load", i): ("value", i) for i in range(60)}
    tasks.update({f"inc-{i}": ("add", ("load", 0)) for i in range(50)})
    tasks.update({f"dbl-{i}": ("add", ("load", i), ("load", 0)) for i in range(40)})
    keys = list(tasks)
    sim = SimCluster(n_workers=3, nthreads=2, seed=seed)
    sim.submit("c1", tasks, keys, batch_size=rng.choice([7, 25]))
    sim.run(rng.randrange(0, 60))
    # another client sends keys c1 may have sent already (then not by the bulk path)
    again = {k: tasks[k] for k in [("load", 0), *keys[30:70]]}
    sim.submit("c2", again, batch_size=20)
    sim.kill_at(sim.step_count + rng.randrange(1, 200), "sim://worker-1")
    sim.run_until_quiet()
    sim.check_quiet()
    check_results(sim, tasks, keys)
    sim.release("c2", list(again))
    release_all_and_check_empty(sim, "c1", keys)


@pytest.mark.parametrize("seed", range(8))
def test_batched_graphs_survive_deaths_and_leave_nothing(seed: int) -> None:
    """Graphs sent as TaskBatches (what Client.map sends), with shared and per-row
    dependencies, retries and restrictions: right values, and every chunk and function
    reaches a worker once before use and is freed with the last task using it."""
    rng = random.Random(seed)
    tasks = random_dag(rng, 200)
    keys = list(tasks)
    flaky = [k for k in keys[5::17] if tasks[k][0] == "add"]
    for k in flaky:
        tasks[k] = ("flaky", 1, *dependencies_of(tasks[k]))
    survivors = ["sim://worker-0", "sim://worker-1"]
    restrictions = {k: (rng.choice(survivors),) for k in keys[::23]}
    sim = SimCluster(n_workers=3, nthreads=2, seed=seed)
    sim.submit(
        "c1",
        tasks,
        keys[::2],
        retries={k: 2 for k in flaky},
        restrictions=restrictions,
        batch_size=rng.choice([1, 7, 40]),
    )
    sim.kill_at(rng.randrange(50, 800), "sim://worker-2")
    sim.run_until_quiet()
    sim.check_quiet()
    check_results(sim, tasks, keys[::2])
    release_all_and_check_empty(sim, "c1", keys[::2])
