"""``explain(state, key, now)``: one sentence per situation, from the state alone."""

from __future__ import annotations

from typing import Any

from conveyor.core import events as ev
from conveyor.core.explain import explain
from conveyor.core.scheduler import SchedulerState
from conveyor.core.types import Key

W1 = "tcp://10.0.0.1:1000"
W2 = "tcp://10.0.0.2:1000"
C = "client-1"


def make(**kwargs: Any) -> SchedulerState:
    return SchedulerState(validate=True, **kwargs)


def add_worker(
    s: SchedulerState,
    address: str,
    nthreads: int = 1,
    resources: dict[str, float] | None = None,
    name: str | None = None,
    now: float = 0.0,
) -> None:
    s.handle(
        ev.AddWorker(now, address, name or address, nthreads, 2**30, "host", {}, resources or {})
    )


def submit(s: SchedulerState, tasks: list[ev.TaskSpec], now: float = 0.0) -> None:
    for order, t in enumerate(tasks):
        t.order = order
    s.handle(ev.UpdateGraph(now, C, tasks, [t.key for t in tasks]))


def spec(key: Key, *deps: Key, **kwargs: Any) -> ev.TaskSpec:
    return ev.TaskSpec(key, b"spec", tuple(deps), **kwargs)


def test_unknown_key() -> None:
    assert explain(make(), "nope", 0.0) == (
        "'nope' is not known to the scheduler: it was never submitted, or it was released "
        "and forgotten"
    )


def test_waiting_names_a_few_dependencies_and_counts_the_rest() -> None:
    s = make()
    add_worker(s, W1)
    deps = [spec(f"d{i}") for i in range(5)]
    submit(s, [*deps, spec("x", *(d.key for d in deps))])
    s.handle(ev.TaskFinished(1.0, W1, "d0", 8, "int", 0, 1))
    text = explain(s, "x", 2.0)
    assert text.startswith("'x' is waiting for 4 of its 5 dependencies: ")
    assert text.endswith(" and 1 more")
    assert text.count("(") == 3  # three named, each with its state
    assert "'d1' (processing)" in text


def test_no_worker_has_the_resource() -> None:
    s = make()
    add_worker(s, W1)
    submit(s, [spec("t", resources={"TPU": 1.0})])
    assert explain(s, "t", 0.0) == (
        "'t' cannot start yet: no worker has any TPU (it needs 1). It starts when such a "
        "worker joins"
    )


def test_no_worker_has_enough_of_the_resource() -> None:
    s = make()
    add_worker(s, W1, resources={"GPU": 1})
    add_worker(s, W2, resources={"GPU": 2})
    submit(s, [spec("t", resources={"GPU": 4.0})])
    assert explain(s, "t", 0.0) == (
        "'t' cannot start yet: no worker has enough GPU: it needs 4, the most any worker "
        "has is 2. It starts when such a worker joins"
    )


def test_every_worker_with_the_resource_is_busy() -> None:
    s = make()
    add_worker(s, W1, nthreads=4, resources={"GPU": 1})
    submit(s, [spec("a", resources={"GPU": 1.0}), spec("b", resources={"GPU": 1.0})])
    waiting = next(k for k, ts in s.tasks.items() if ts.state == "no-worker")
    assert explain(s, waiting, 0.0) == (
        f"{waiting!r} cannot start yet: the 1 worker with GPU=1 ({W1}) hold it for other "
        "tasks; it starts when enough comes free"
    )


def test_restricted_to_workers_that_are_not_connected() -> None:
    s = make()
    add_worker(s, W1, name="alice")
    submit(s, [spec("x", workers=("bob", "carol"))])
    assert explain(s, "x", 0.0) == (
        "'x' cannot start yet: it may only run on 'bob' and 'carol', and none of them is connected"
    )


def test_restricted_to_workers_lacking_the_resource() -> None:
    s = make()
    add_worker(s, W1, name="alice")
    submit(s, [spec("x", workers=("alice",), resources={"GPU": 1.0})])
    assert (
        explain(s, "x", 0.0) == f"'x' cannot start yet: it may only run on {W1}, which lacks GPU=1"
    )


def test_no_worker_at_all() -> None:
    s = make()
    submit(s, [spec("x")])
    assert explain(s, "x", 0.0) == "'x' cannot start yet: no worker is connected"


def test_queued_behind_other_root_tasks() -> None:
    s = make()
    add_worker(s, W1, nthreads=1)
    submit(s, [spec(("r", i)) for i in range(10)])
    queued = sorted(s.queued.sorted(), key=lambda t: t.priority)
    assert len(queued) >= 3
    assert explain(s, queued[0].key, 0.0) == (
        f"{queued[0].key!r} is queued behind 0 other tasks: root-task queuing holds tasks "
        "back until a worker has a free slot"
    )
    assert explain(s, queued[2].key, 0.0).startswith(f"{queued[2].key!r} is queued behind 2 ")


def test_processing_says_where_and_for_how_long() -> None:
    s = make()
    add_worker(s, W1, name="alice")
    submit(s, [spec("x")], now=10.0)
    assert explain(s, "x", 12.5) == (
        f"'x' is processing on {W1} (name 'alice'), sent there 2.5 s ago"
    )


def test_processing_start_no_longer_in_the_log() -> None:
    s = make(transition_log_length=2)
    add_worker(s, W1)
    submit(s, [spec("x")], now=10.0)
    submit(s, [spec("y", workers=("nobody",)), spec("z", workers=("nobody",))], now=11.0)
    assert explain(s, "x", 12.0) == (
        f"'x' is processing on {W1} (since when: no longer in the transition log)"
    )


def test_in_memory_names_the_holders() -> None:
    s = make()
    add_worker(s, W1)
    add_worker(s, W2)
    submit(s, [spec("x")])
    worker = s.tasks["x"].processing_on
    assert worker is not None
    s.handle(ev.TaskFinished(1.0, worker.address, "x", 8, "int", 0, 1))
    other = W2 if worker.address == W1 else W1
    s.handle(ev.WorkerAddKeys(2.0, other, {"x": 8}))
    assert explain(s, "x", 3.0) == f"'x' is in memory on 2 workers: {W1} and {W2}"


def test_erred_with_its_own_error_or_a_dependencys() -> None:
    s = make()
    add_worker(s, W1)
    submit(s, [spec("a"), spec("b", "a")])
    s.handle(ev.TaskErred(1.0, W1, "a", None, None, "ZeroDivisionError: division by zero"))
    assert explain(s, "a", 2.0) == "'a' erred: ZeroDivisionError: division by zero"
    assert explain(s, "b", 2.0) == (
        "'b' erred because its dependency 'a' failed: ZeroDivisionError: division by zero"
    )


def test_released() -> None:
    s = make()
    add_worker(s, W1)
    s.handle(ev.UpdateGraph(0.0, C, [spec("a"), spec("b", "a", order=1)], ["b"]))
    s.handle(ev.TaskFinished(1.0, W1, "a", 8, "int", 0, 1))
    s.handle(ev.TaskFinished(1.0, W1, "b", 8, "int", 0, 1))
    assert s.tasks["a"].state == "released"
    assert explain(s, "a", 2.0) == (
        "'a' is released: no client holds a future for it and no waiting task needs it"
    )
