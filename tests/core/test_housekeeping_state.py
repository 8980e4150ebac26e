"""The scheduler's housekeeping (``conveyor.core.housekeeping``): forgetting empty task
prefixes, reconciling a worker's memory with the scheduler's belief, and the operator's
task durations."""

from __future__ import annotations

import pytest

from conveyor.core import events as ev
from conveyor.core.instructions import ComputeTask, FreeKeys, Instruction
from conveyor.core.scheduler import SchedulerState

W1 = "tcp://10.0.0.1:1000"
W2 = "tcp://10.0.0.2:1000"
C = "client-1"


def computes(out: list[Instruction]) -> list[ComputeTask]:
    return [i for i in out if isinstance(i, ComputeTask)]


def frees(out: list[Instruction]) -> list[FreeKeys]:
    return [i for i in out if isinstance(i, FreeKeys)]


def cluster(*workers: str) -> SchedulerState:
    s = SchedulerState(validate=True)
    for w in workers:
        s.handle(ev.AddWorker(0.0, w, w, 2, 2**30, "host"))
    s.handle(ev.AddClient(0.0, C))
    return s


def run(s: SchedulerState, keys: list[str], now: float = 1.0) -> None:
    """Submit ``keys`` (no dependencies) and finish each where it was placed."""
    specs = [ev.TaskSpec(k, b"run", order=i) for i, k in enumerate(keys)]
    out = computes(s.handle(ev.UpdateGraph(now, C, specs, keys)))
    while out:
        c = out.pop()
        out += computes(
            s.handle(
                ev.TaskFinished(now, c.worker, c.key, 8, start=now, stop=now + 2, run_id=c.run_id)
            )
        )


def test_prefix_forgotten_once_empty_for_the_interval_and_its_duration_remembered() -> None:
    s = cluster(W1)
    run(s, ["load-1", "load-2"])
    assert s.task_duration["load"] == 2.0
    s.handle(ev.ClientReleasesKeys(5.0, C, ["load-1", "load-2"]))
    assert not s.tasks and s.empty_prefixes == {"load": 5.0}

    s.handle(ev.ForgetPrefixes(5.5, emptied_before=4.0))  # empty for too short a while
    assert "load" in s.task_prefixes
    s.handle(ev.ForgetPrefixes(7.0, emptied_before=6.0))
    assert "load" not in s.task_prefixes and not s.empty_prefixes
    assert "load" not in s.task_duration  # a forgotten prefix has no live estimate

    # seen again: its learned duration is back (placement estimates from it at once)
    s.handle(ev.UpdateGraph(8.0, C, [ev.TaskSpec("load-3", b"run")], ["load-3"]))
    assert s.task_prefixes["load"].duration_average == 2.0
    assert s.task_prefixes["load"].states["forgotten"] == 0  # the counts start afresh


def test_a_prefix_used_again_before_the_sweep_is_kept() -> None:
    s = cluster(W1)
    run(s, ["a-1"])
    s.handle(ev.ClientReleasesKeys(2.0, C, ["a-1"]))
    assert "a" in s.empty_prefixes
    s.handle(ev.UpdateGraph(3.0, C, [ev.TaskSpec("a-2", b"run")], ["a-2"]))
    assert "a" not in s.empty_prefixes
    s.handle(ev.ForgetPrefixes(10.0, emptied_before=9.0))
    assert s.task_prefixes["a"].ngroups == 1 and "a-2" in s.tasks


def test_prefixes_forgotten_in_the_order_they_emptied() -> None:
    s = cluster(W1)
    for i, name in enumerate(["x", "y", "z"]):
        run(s, [f"{name}-1"], now=float(i))
        s.handle(ev.ClientReleasesKeys(float(i), C, [f"{name}-1"]))
    s.handle(ev.ForgetPrefixes(5.0, emptied_before=1.0))
    assert sorted(s.task_prefixes) == ["z"]


def test_sync_missing_last_replica_is_recomputed() -> None:
    s = cluster(W1)
    run(s, ["inc-1"])
    assert s.tasks["inc-1"].state == "memory"
    out = s.handle(ev.WorkerMemorySynced(3.0, W1, ("inc-1",), ()))
    # lost: the client still wants it, so it runs again
    assert [c.key for c in computes(out)] == ["inc-1"]
    assert s.tasks["inc-1"].state == "processing" and not s.tasks["inc-1"].who_has


def test_sync_missing_one_of_two_replicas_only_drops_that_replica() -> None:
    s = cluster(W1, W2)
    run(s, ["inc-1"])
    ts = s.tasks["inc-1"]
    holder = next(iter(ts.who_has)).address
    other = W2 if holder == W1 else W1
    s.handle(ev.WorkerAddKeys(2.0, other, {"inc-1": 8}))
    assert len(ts.who_has) == 2
    out = s.handle(ev.WorkerMemorySynced(3.0, holder, ("inc-1",), ()))
    assert not computes(out) and ts.state == "memory"
    assert [w.address for w in ts.who_has] == [other]
    assert ts not in s.workers[holder].has_what


def test_sync_frees_leaked_keys_but_not_known_ones() -> None:
    s = cluster(W1)
    run(s, ["inc-1"])
    out = s.handle(ev.WorkerMemorySynced(3.0, W1, (), ("ghost", "inc-1")))
    assert [f.keys for f in frees(out)] == [["ghost"]]
    assert s.tasks["inc-1"].state == "memory"


def test_sync_answer_from_a_removed_worker_is_ignored() -> None:
    s = cluster(W1)
    run(s, ["inc-1"])
    s.handle(ev.RemoveWorker(2.0, W1, "gone"))
    assert s.handle(ev.WorkerMemorySynced(3.0, W1, ("inc-1",), ("ghost",))) == []


def test_operator_sets_a_prefix_duration() -> None:
    s = cluster(W1)
    durations = s.task_duration
    durations["slow"] = 7.5  # before it is ever seen: its default
    s.handle(ev.UpdateGraph(1.0, C, [ev.TaskSpec("slow-1", b"run")], ["slow-1"]))
    ts = s.tasks["slow-1"]
    assert s.workers[W1].processing[ts] == 7.5  # placement counted 7.5 s for it
    run(s, ["fast-1"])
    durations["fast"] = 0.25  # a learned one is overridden at once
    assert s.task_duration["fast"] == 0.25 and s.task_prefixes["fast"].duration_average == 0.25
    assert dict(s.task_duration) == {"fast": 0.25, "slow": 7.5}
    with pytest.raises(ValueError, match="finite"):
        durations["x"] = -1
    with pytest.raises(TypeError):
        durations[3] = 1.0  # type: ignore[index]
    del durations["slow"]
    assert "slow" not in s.default_task_durations


def test_a_learned_duration_cannot_be_deleted() -> None:
    s = cluster(W1)
    run(s, ["inc-1"])
    with pytest.raises(KeyError, match="learned"):
        del s.task_duration["inc"]
    with pytest.raises(KeyError):
        del s.task_duration["never-seen"]
