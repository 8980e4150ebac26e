"""Worker resources and task options on the state machines, driven directly.

Scheduler: a task needing resources starts only on a worker with enough of each one
free, holds them while processing and gives them back however it leaves; tasks no worker
can run wait in no-worker until one can. Worker: a ready task needing resources starts
only when its amounts are available. Every state machine validates its invariants after
each event (resource bookkeeping included).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from conveyor.core import events as ev
from conveyor.core import worker_events as we
from conveyor.core.instructions import ComputeTask, Instruction, KeyErred
from conveyor.core.scheduler import SchedulerState
from conveyor.core.types import Key
from conveyor.core.worker import WorkerState

W1 = "tcp://10.0.0.1:1000"
W2 = "tcp://10.0.0.2:1000"
W3 = "tcp://10.0.0.3:1000"
C = "client-1"
GPU = {"GPU": 1.0}


def make() -> SchedulerState:
    return SchedulerState(validate=True)


def add_worker(
    s: SchedulerState,
    address: str,
    nthreads: int = 4,
    resources: dict[str, float] | None = None,
    name: str | None = None,
) -> list[Instruction]:
    return s.handle(
        ev.AddWorker(0.0, address, name or address, nthreads, 2**30, "host", {}, resources or {})
    )


def spec(key: Key, *deps: Key, **kwargs: Any) -> ev.TaskSpec:
    return ev.TaskSpec(key, b"spec", tuple(deps), **kwargs)


def submit(
    s: SchedulerState, tasks: list[ev.TaskSpec], now: float = 0.0, **kwargs: Any
) -> list[Instruction]:
    for order, t in enumerate(tasks):
        t.order = order
    return s.handle(ev.UpdateGraph(now, C, tasks, [t.key for t in tasks], **kwargs))


def finish(s: SchedulerState, worker: str, key: Key, now: float = 1.0) -> list[Instruction]:
    return s.handle(ev.TaskFinished(now, worker, key, 8, "int", 0.0, 0.1))


def placed(out: list[Instruction]) -> dict[Key, str]:
    """Key -> worker of each ComputeTask sent."""
    return {i.key: i.worker for i in out if isinstance(i, ComputeTask)}


def states(s: SchedulerState) -> dict[Key, str]:
    return {k: ts.state for k, ts in s.tasks.items()}


# ---------------------------------------------------------------- scheduler


def test_resource_task_runs_only_where_the_resource_is_free() -> None:
    s = make()
    add_worker(s, W1)
    add_worker(s, W2, resources={"GPU": 1})
    out = submit(s, [spec(f"g{i}", resources=GPU) for i in range(3)])
    # one GPU: one task at a time, on the GPU worker, whatever the threads
    assert placed(out) == {"g0": W2}
    assert out[0].resources == GPU  # type: ignore[union-attr]
    assert states(s) == {"g0": "processing", "g1": "no-worker", "g2": "no-worker"}
    assert s.workers[W2].used_resources == {"GPU": 1.0}
    # its result frees the GPU: the next in priority order starts there at once
    assert placed(finish(s, W2, "g0")) == {"g1": W2}
    assert placed(finish(s, W2, "g1")) == {"g2": W2}
    assert placed(finish(s, W2, "g2")) == {}
    assert s.workers[W2].used_resources == {"GPU": 0.0}
    assert not s.resource_book.waiting


def test_amounts_add_up_on_a_worker() -> None:
    s = make()
    add_worker(s, W1, resources={"MEM": 10})
    out = submit(s, [spec(k, resources={"MEM": 4.0}) for k in "abc"])
    assert placed(out) == {"a": W1, "b": W1}  # 4 + 4 <= 10 < 4 + 4 + 4
    assert s.tasks["c"].state == "no-worker"
    assert placed(finish(s, W1, "a")) == {"c": W1}


def test_task_needing_several_resources_waits_for_all_of_them() -> None:
    s = make()
    add_worker(s, W1, resources={"GPU": 1})
    add_worker(s, W2, resources={"MEM": 8})
    out = submit(s, [spec("x", resources={"GPU": 1.0, "MEM": 4.0})])
    assert out == [] and s.tasks["x"].state == "no-worker"
    out = add_worker(s, W3, resources={"GPU": 2, "MEM": 4})
    assert placed(out) == {"x": W3}


def test_task_no_worker_can_run_waits_until_one_joins() -> None:
    s = make()
    add_worker(s, W1, resources={"GPU": 4})
    out = submit(s, [spec("t", resources={"TPU": 1.0}), spec("big", resources={"GPU": 8.0})])
    assert out == [] and states(s) == {"t": "no-worker", "big": "no-worker"}
    assert placed(add_worker(s, W2)) == {}  # no resources: nothing for it
    assert placed(add_worker(s, W3, resources={"TPU": 1})) == {"t": W3}
    assert s.tasks["big"].state == "no-worker"


def test_resources_come_back_however_the_task_leaves() -> None:
    s = make()
    add_worker(s, W1, resources={"GPU": 1})
    submit(s, [spec("a", resources=GPU), spec("b", resources=GPU)])
    # an error frees the GPU for b
    out = s.handle(ev.TaskErred(1.0, W1, "a", None, None, "ValueError: no"))
    assert placed(out) == {"b": W1}
    assert any(isinstance(i, KeyErred) for i in out)
    # a release (the client lets go) frees it too
    submit(s, [spec("c", resources=GPU)])
    assert s.tasks["c"].state == "no-worker"
    out = s.handle(ev.ClientReleasesKeys(2.0, C, ["b"]))
    assert placed(out) == {"c": W1}
    assert s.workers[W1].used_resources == {"GPU": 1.0}


def test_a_dead_workers_resource_tasks_go_to_another() -> None:
    s = make()
    add_worker(s, W1, resources={"GPU": 1})
    add_worker(s, W2, resources={"GPU": 1})
    out = submit(s, [spec("a", resources=GPU), spec("b", resources=GPU), spec("c", resources=GPU)])
    assert sorted(placed(out).values()) == [W1, W2]
    on_w1 = next(k for k, w in placed(out).items() if w == W1)
    on_w2 = next(k for k, w in placed(out).items() if w == W2)
    s.handle(ev.RemoveWorker(1.0, W1))
    # W2 is busy: the orphan joins the waiting task; both wait for a free GPU
    assert states(s)[on_w1] == "no-worker"
    assert sorted(k for k, st in states(s).items() if st == "no-worker") == sorted(
        k for k in "abc" if k != on_w2
    )
    assert "GPU" in s.resource_book.holders and W1 not in s.resource_book.holders["GPU"]
    first = placed(finish(s, W2, on_w2))
    assert list(first.values()) == [W2]
    second = placed(add_worker(s, W3, resources={"GPU": 1}))
    assert list(second.values()) == [W3]
    assert set(first) | set(second) | {on_w2} == {"a", "b", "c"}


def test_named_workers_that_join_later_get_the_task() -> None:
    s = make()
    add_worker(s, W1, name="alice")
    out = submit(s, [spec("x", workers=("bob",))])
    assert out == [] and s.tasks["x"].state == "no-worker"
    assert placed(add_worker(s, W2, name="bob")) == {"x": W2}


def test_named_workers_and_resources_combine() -> None:
    s = make()
    add_worker(s, W1, resources={"GPU": 1}, name="a")
    add_worker(s, W2, resources={"GPU": 1}, name="b")
    out = submit(s, [spec("x", resources=GPU, workers=("b",)), spec("y", resources=GPU)])
    assert placed(out)["x"] == W2
    assert placed(out)["y"] == W1
    out = submit(s, [spec("z", resources=GPU, workers=("b",))])
    assert out == [] and s.tasks["z"].state == "no-worker"
    # W1's GPU frees first, but z may only run on b
    assert placed(finish(s, W1, "y")) == {}
    assert placed(finish(s, W2, "x")) == {"z": W2}


def test_allow_other_workers_relaxes_names_but_never_resources() -> None:
    s = make()
    add_worker(s, W1, name="cpu")
    add_worker(s, W2, resources={"GPU": 1}, name="gpu")
    # the named worker has no GPU at all: any worker with a free GPU will do
    out = submit(s, [spec("x", resources=GPU, workers=("cpu",), allow_other_workers=True)])
    assert placed(out) == {"x": W2}
    # loose, but the named worker has a GPU: wait for it rather than go elsewhere
    add_worker(s, W3, resources={"GPU": 1}, name="gpu2")
    out = submit(s, [spec("y", resources=GPU, workers=("gpu",), allow_other_workers=True)])
    assert out == [] and s.tasks["y"].state == "no-worker"
    assert placed(finish(s, W2, "x")) == {"y": W2}


def test_restricted_tasks_are_never_queued_as_root_ish() -> None:
    s = make()
    add_worker(s, W1, nthreads=1, resources={"GPU": 100})
    out = submit(s, [spec(("g", i), resources=GPU) for i in range(10)])
    # ten tasks of one group, one thread: root-ish, but restricted, so all are sent
    assert len(placed(out)) == 10 and not s.queued


def test_per_task_priority_overrides_the_update() -> None:
    s = make()
    add_worker(s, W1, nthreads=1, resources={"GPU": 1})
    out = submit(
        s,
        [
            spec("low", resources=GPU, priority=-5),
            spec("mid", resources=GPU),
            spec("high", resources=GPU, priority=10),
        ],
        user_priority=1,
    )
    assert s.tasks["low"].priority == (5, 1, 0)
    assert s.tasks["mid"].priority == (-1, 1, 1)
    assert s.tasks["high"].priority == (-10, 1, 2)
    # one GPU: the first placed is arbitrary (the order of the update), then by priority
    first = next(iter(placed(out)))
    order = [first]
    while len(order) < 3:
        order += list(placed(finish(s, W1, order[-1])))
    assert [k for k in order if k != first] == [k for k in ("high", "mid", "low") if k != first]


def test_batch_resources_and_retries_apply_to_every_task() -> None:
    s = make()
    add_worker(s, W1, resources={"GPU": 2})
    s.handle(
        ev.UpdateGraph(
            0.0,
            C,
            [],
            [],
            functions={"f": b"fn", "c": b"chunk"},
            batches=[
                ev.TaskBatch(
                    ["m-0", "m-1", "m-2"], "f", "c", retries=2, resources=GPU, one_group=True
                )
            ],
        )
    )
    assert states(s) == {"m-0": "processing", "m-1": "processing", "m-2": "no-worker"}
    assert all(ts.retries == 2 and ts.resource_restrictions == GPU for ts in s.tasks.values())
    out = s.handle(ev.TaskErred(1.0, W1, "m-0", None, None, "E: x"))
    # a retry: m-0 goes back to waiting for the GPU, behind nobody (m-2 is later)
    assert s.tasks["m-0"].retries == 1
    assert placed(out) in ({"m-0": W1}, {"m-2": W1})


def test_unrestricted_tasks_keep_no_rare_record() -> None:
    s = make()
    add_worker(s, W1, resources={"GPU": 1})
    submit(s, [spec("plain"), spec("gpu", resources=GPU)])
    assert s.tasks["plain"]._rare is None
    assert s.tasks["gpu"]._rare is not None


def test_workers_info_reports_resources() -> None:
    s = make()
    add_worker(s, W1, resources={"GPU": 2})
    submit(s, [spec("x", resources=GPU)])
    info = s.workers_info()[W1]
    assert info["resources"] == {"GPU": 2} and info["used_resources"] == {"GPU": 1.0}


# ------------------------------------------------------------------- worker


def compute(
    key: Key, order: int, resources: dict[str, float] | None = None, **kw: Any
) -> we.ComputeTaskEvent:
    return we.ComputeTaskEvent(0.0, key, b"s", (0, 1, order), resources=resources, **kw)


def executed(out: list[we.WorkerInstruction]) -> list[Key]:
    return [i.key for i in out if isinstance(i, we.Execute)]


def done(w: WorkerState, key: Key) -> list[we.WorkerInstruction]:
    return w.handle(we.ExecuteSuccess(1.0, key, 8, "int", 0.0, 1.0))


def test_worker_runs_one_gpu_task_at_a_time_whatever_its_threads() -> None:
    w = WorkerState("w", 4, validate=True, resources={"GPU": 1})
    started = []
    for i in range(3):
        started += executed(w.handle(compute(f"g{i}", i, GPU)))
    assert started == ["g0"]
    assert w.available_resources == {"GPU": 0.0}
    assert executed(done(w, "g0")) == ["g1"]
    assert executed(w.handle(we.ExecuteFailure(2.0, "g1", None, None, "E", "", 0, 1))) == ["g2"]
    assert executed(done(w, "g2")) == []
    assert w.available_resources == {"GPU": 1.0}


def test_worker_runs_unrestricted_tasks_beside_a_waiting_gpu_task() -> None:
    w = WorkerState("w", 2, validate=True, resources={"GPU": 1}, prefetch_per_thread=1)
    assert executed(w.handle(compute("g0", 0, GPU))) == ["g0"]
    assert executed(w.handle(compute("g1", 1, GPU))) == []
    # g1 waits for the GPU, but a plain task takes the free thread
    assert executed(w.handle(compute("plain", 2))) == ["plain"]
    assert executed(done(w, "plain")) == []
    assert executed(done(w, "g0")) == ["g1"]


def test_worker_prefers_the_higher_priority_when_both_can_run() -> None:
    w = WorkerState("w", 1, validate=True, resources={"GPU": 1}, prefetch_per_thread=1)
    assert executed(w.handle(compute("busy", 0))) == ["busy"]
    w.handle(compute("plain", 5))
    w.handle(compute("gpu", 3, GPU))
    assert executed(done(w, "busy")) == ["gpu"]  # (0, 1, 3) < (0, 1, 5)
    assert executed(done(w, "gpu")) == ["plain"]


def test_worker_releases_a_freed_constrained_task() -> None:
    w = WorkerState("w", 1, validate=True, resources={"GPU": 1})
    w.handle(compute("g0", 0, GPU))
    w.handle(compute("g1", 1, GPU))
    w.handle(we.FreeKeysEvent(1.0, ["g1"]))
    assert "g1" not in w.tasks and not w.constrained and not w.task_resources
    assert executed(done(w, "g0")) == []


def test_worker_refuses_a_task_it_could_never_run() -> None:
    w = WorkerState("w", 2, validate=True, resources={"GPU": 1})
    out = w.handle(compute("big", 0, {"GPU": 2.0}, run_id=4))
    assert executed(out) == []
    (erred,) = [i for i in out if isinstance(i, we.TaskErredMsg)]
    assert erred.key == "big" and erred.run_id == 4
    assert erred.exception_text.startswith("InsufficientResources: task 'big' needs GPU=2")
    assert "big" not in w.tasks


# --------------------------------------------------------- seeded stress


@pytest.mark.parametrize("seed", range(8))
def test_random_resource_workloads_keep_the_books_and_finish(seed: int) -> None:
    """Workers come and go, tasks need random amounts, finish, fail and retry; every
    event is validated (held amounts, queues), nothing ever exceeds a worker's amount,
    and once a big enough worker stays, every task finishes."""
    rng = random.Random(seed)
    s = SchedulerState(validate=True, replayable=True)
    names = iter(range(1000))
    live: list[str] = []

    def join(resources: dict[str, float]) -> None:
        address = f"tcp://w{next(names)}:1"
        live.append(address)
        add_worker(s, address, nthreads=rng.randint(1, 3), resources=resources)

    join({"GPU": 1})
    tasks = []
    for i in range(40):
        need = rng.choice([{}, {"GPU": 1.0}, {"GPU": 2.0}, {"MEM": 3.0}, {"GPU": 1.0, "MEM": 1.0}])
        deps = (f"t{rng.randrange(i)}",) if i and rng.random() < 0.3 else ()
        tasks.append(spec(f"t{i}", *deps, resources=need or None, retries=rng.randint(0, 1)))
    submit(s, tasks)
    for _ in range(400):
        running = [ts for ts in s.tasks.values() if ts.state == "processing"]
        roll = rng.random()
        if roll < 0.05 and len(live) > 1:
            s.handle(ev.RemoveWorker(1.0, live.pop(rng.randrange(len(live)))))
        elif roll < 0.12:
            join(rng.choice([{}, {"GPU": 2}, {"MEM": 4}, {"GPU": 1, "MEM": 2}]))
        elif running and roll < 0.2:
            ts = rng.choice(running)
            assert ts.processing_on is not None
            s.handle(ev.TaskErred(1.0, ts.processing_on.address, ts.key, None, None, "E: x"))
        elif running:
            ts = rng.choice(running)
            assert ts.processing_on is not None
            finish(s, ts.processing_on.address, ts.key)
        for ws in s.workers.values():
            for name, used in ws.used_resources.items():
                assert used <= ws.resources.get(name, 0.0) + 1e-9
    join({"GPU": 2, "MEM": 3})  # can run anything, and stays
    while running := [ts for ts in s.tasks.values() if ts.state == "processing"]:
        for ts in running:
            assert ts.processing_on is not None
            finish(s, ts.processing_on.address, ts.key)
    assert all(ts.state in ("memory", "erred") for ts in s.tasks.values()), states(s)
    assert not s.unrunnable and not s.resource_book.waiting
