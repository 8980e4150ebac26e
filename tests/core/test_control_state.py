"""Cluster control in the state machines, driven with events: retiring workers, copying
and dropping replicas, retrying erred tasks, forgetting everything; the plans of
``core.replicas``; and a worker asked for copies (``AcquireReplicasEvent``).

Every SchedulerState here validates its invariants after each event.
"""

from __future__ import annotations

from typing import Any

from conveyor.core import events as ev
from conveyor.core import worker_events as we
from conveyor.core.instructions import (
    AcquireReplicas,
    ComputeTask,
    FreeKeys,
    Instruction,
    KeyErred,
    KeyInMemory,
    KeysCancelled,
)
from conveyor.core.replicas import (
    plan_rebalance,
    plan_replicate,
    plan_retire,
    workers_to_close,
)
from conveyor.core.scheduler import SchedulerState
from conveyor.core.types import Key
from conveyor.core.worker import WorkerState

W1 = "tcp://10.0.0.1:1000"
W2 = "tcp://10.0.0.2:1000"
W3 = "tcp://10.0.0.3:1000"
C = "client-1"


def make() -> SchedulerState:
    s = SchedulerState(validate=True)
    for address in (W1, W2, W3):
        s.handle(ev.AddWorker(0.0, address, address, 1, 2**30, "host", {}))
    return s


def scatter(s: SchedulerState, placement: dict[Key, tuple[list[str], int]]) -> None:
    """Keys in memory where ``placement`` says, with their sizes, wanted by C."""
    who_has = {k: workers for k, (workers, _) in placement.items()}
    nbytes = {k: size for k, (_, size) in placement.items()}
    s.handle(ev.UpdateData(0.0, C, who_has, nbytes))


def of(out: list[Instruction], kind: type) -> list[Any]:
    return [i for i in out if isinstance(i, kind)]


def holders(s: SchedulerState, key: Key) -> set[str]:
    return {ws.address for ws in s.tasks[key].who_has}


# ------------------------------------------------------------------ retire


def test_retiring_worker_gets_no_tasks_and_its_running_task_moves_unharmed() -> None:
    s = make()
    s.handle(ev.UpdateGraph(0.0, C, [ev.TaskSpec("x", b"x", workers=(W1,))], ["x"]))
    s.handle(ev.UpdateGraph(0.0, C, [ev.TaskSpec("y", b"y")], ["y"]))
    y_on = s.tasks["y"].processing_on
    assert y_on is not None
    out = s.handle(ev.RetireWorkers(1.0, [y_on.address]))
    assert s.workers[y_on.address].status == "closing_gracefully"
    assert y_on.address in s.retiring
    assert FreeKeys(y_on.address, ["y"]) in out
    moved = of(out, ComputeTask)
    assert [c.key for c in moved] == ["y"] and moved[0].worker != y_on.address
    assert s.tasks["y"].suspicious == 0  # a graceful move is not a failure
    s.handle(ev.UpdateGraph(2.0, C, [ev.TaskSpec(f"z{i}", b"z") for i in range(6)], []))
    for i in range(6):
        s.handle(ev.ClientDesiresKeys(2.0, C, [f"z{i}"]))
    placed = {ts.processing_on.address for ts in s.tasks.values() if ts.processing_on}
    assert y_on.address not in placed


def test_retiring_the_only_allowed_worker_parks_its_restricted_task_until_cancelled() -> None:
    s = make()
    s.handle(ev.RetireWorkers(0.0, [W1]))
    s.handle(ev.UpdateGraph(0.0, C, [ev.TaskSpec("x", b"x", workers=(W1,))], ["x"]))
    assert s.tasks["x"].state == "no-worker"
    out = s.handle(ev.CancelRetirement(1.0, [W1]))
    assert s.workers[W1].status == "running" and not s.retiring
    assert [(c.worker, c.key) for c in of(out, ComputeTask)] == [(W1, "x")]


def test_removing_a_retiring_worker_forgets_its_retirement() -> None:
    s = make()
    s.handle(ev.RetireWorkers(0.0, [W2]))
    s.handle(ev.RemoveWorker(1.0, W2, "retired"))
    assert W2 not in s.retiring and W2 not in s.workers


def test_plan_retire_copies_only_keys_held_nowhere_else() -> None:
    s = make()
    scatter(s, {"only": ([W1], 100), "shared": ([W1, W2], 50), "elsewhere": ([W3], 10)})
    s.handle(ev.RetireWorkers(0.0, [W1]))
    copies, stuck = plan_retire(s, [W1])
    assert stuck == {}
    assert list(copies.values()) == [["only"]]
    assert set(copies) <= {W2, W3}
    # a copy already asked for counts
    assert plan_retire(s, [W1], {"only": [W3]}) == ({}, {})


def test_plan_retire_reports_keys_with_nowhere_to_go() -> None:
    s = make()
    scatter(s, {"a": ([W1], 1)})
    s.handle(ev.RetireWorkers(0.0, [W1, W2, W3]))
    assert plan_retire(s, [W1, W2, W3]) == ({}, {W1: ["a"]})


# --------------------------------------------------------- copy and drop


def test_copy_replicas_asks_the_recipient_and_counts_the_copy_when_reported() -> None:
    s = make()
    scatter(s, {"a": ([W1], 100)})
    out = s.handle(ev.CopyReplicas(0.0, {W2: ["a", "unknown"], W1: ["a"]}))
    assert out == [AcquireReplicas(W2, {"a": [W1]}, {"a": 100})]
    assert holders(s, "a") == {W1}
    s.handle(ev.WorkerAddKeys(1.0, W2, {"a": 100}))
    assert holders(s, "a") == {W1, W2}
    assert s.workers[W2].nbytes == 100


def test_drop_replicas_keeps_the_last_copy() -> None:
    s = make()
    scatter(s, {"a": ([W1, W2], 10), "b": ([W1], 10)})
    out = s.handle(ev.DropReplicas(0.0, {W1: ["a", "b"], W2: ["a"]}))
    assert out == [FreeKeys(W1, ["a"])]
    assert holders(s, "a") == {W2} and holders(s, "b") == {W1}


def test_plan_replicate_fills_the_emptiest_workers_and_drops_surplus() -> None:
    s = make()
    scatter(s, {"big": ([W2], 1000), "a": ([W1], 10), "b": ([W1, W2, W3], 10)})
    copies, drops = plan_replicate(s, ["a", "b"], 2)
    assert copies == {W3: ["a"]}  # W3 holds the least
    assert list(drops.values()) == [["b"]]
    copies, drops = plan_replicate(s, ["a"], None)
    assert copies == {W3: ["a"], W2: ["a"]} and drops == {}
    # only among the named workers
    assert plan_replicate(s, ["a"], None, [W1, W3]) == ({W3: ["a"]}, {})
    # pending copies count
    assert plan_replicate(s, ["a"], 2, None, {"a": [W2]}) == ({}, {})


def test_plan_replicate_spreads_as_a_tree_under_a_branching_factor() -> None:
    s = make()
    scatter(s, {"a": ([W1], 10)})
    # one holder, factor 1: one copy at a time
    assert plan_replicate(s, ["a"], None, branching_factor=1) == ({W2: ["a"]}, {})
    # while that copy is under way, nothing more
    assert plan_replicate(s, ["a"], None, None, {"a": [W2]}, 1) == ({}, {})
    # once it landed, two holders feed the last worker
    scatter(s, {"a": ([W1, W2], 10)})
    assert plan_replicate(s, ["a"], None, branching_factor=1) == ({W3: ["a"]}, {})


def test_plan_rebalance_evens_out_and_never_widens_a_gap() -> None:
    s = make()
    scatter(s, {f"k{i}": ([W1], 100) for i in range(6)})
    moves = plan_rebalance(s)
    assert all(sender == W1 for _, sender, _ in moves)
    load = {W1: 600, W2: 0, W3: 0}
    for _, sender, recipient in moves:
        load[sender] -= 100
        load[recipient] += 100
    assert load == {W1: 200, W2: 200, W3: 200}
    # one key bigger than the gap it would close stays
    s2 = make()
    scatter(s2, {"huge": ([W1], 1000)})
    assert plan_rebalance(s2) == []
    # restricted to keys and workers
    moves = plan_rebalance(s, keys=["k0"], workers=[W1, W3])
    assert moves == [("k0", W1, W3)]


def addresses(workers: list[Any]) -> list[str]:
    return [ws.address for ws in workers]


def test_workers_to_close_picks_idle_workers_holding_the_least() -> None:
    s = make()  # three workers of 1 GiB each
    scatter(s, {"a": ([W1], 300), "b": ([W2], 100)})
    s.handle(ev.UpdateGraph(0.0, C, [ev.TaskSpec("busy", b"x", workers=(W3,))], ["busy"]))
    assert s.tasks["busy"].processing_on is s.workers[W3]
    # W3 runs a task: never chosen; W2 holds less than W1
    assert addresses(workers_to_close(s, n=1)) == [W2]
    assert addresses(workers_to_close(s, n=5)) == [W2, W1]
    assert addresses(workers_to_close(s, target=2)) == [W2]
    assert addresses(workers_to_close(s, n=2, minimum=2)) == [W2]
    # neither n nor target: keep room for memory_ratio x the 400 bytes held
    assert addresses(workers_to_close(s)) == [W2, W1]
    assert addresses(workers_to_close(s, memory_ratio=2**30 * 3 / 400)) == []
    # a group closes whole or not at all
    by_host = workers_to_close(s, n=1, key=lambda ws: "h" if ws.address != W1 else ws.address)
    assert addresses(by_host) == [W1]


def test_workers_to_close_leaves_one_holder_when_room_is_unknown() -> None:
    s = SchedulerState(validate=True)
    for address in (W1, W2):
        s.handle(ev.AddWorker(0.0, address, address, 1, 0, "host", {}))  # no memory limit
    scatter(s, {"a": ([W1], 10)})
    assert addresses(workers_to_close(s)) == [W2]


# ---------------------------------------------------------------- retry


def test_retry_runs_the_erred_task_and_the_dependency_it_blames() -> None:
    s = make()
    tasks = [ev.TaskSpec("x", b"x"), ev.TaskSpec("y", b"y", ("x",), order=1)]
    s.handle(ev.UpdateGraph(0.0, C, tasks, ["y"]))
    x_on = s.tasks["x"].processing_on
    assert x_on is not None
    out = s.handle(ev.TaskErred(1.0, x_on.address, "x", b"exc", None, "ZeroDivisionError: x"))
    assert of(out, KeyErred)[0].key == "y"
    assert s.tasks["y"].state == "erred" and s.tasks["x"].state == "erred"
    out = s.handle(ev.RetryKeys(2.0, C, ["y"]))
    assert [c.key for c in of(out, ComputeTask)] == ["x"]
    assert s.tasks["y"].state == "waiting" and s.tasks["y"].exception_blame is None
    x_on = s.tasks["x"].processing_on
    assert x_on is not None
    s.handle(ev.TaskFinished(3.0, x_on.address, "x", 8))
    assert s.tasks["y"].state == "processing"


def test_retry_ignores_tasks_that_did_not_err() -> None:
    s = make()
    scatter(s, {"a": ([W1], 1)})
    assert s.handle(ev.RetryKeys(0.0, C, ["a", "nope"])) == []
    assert s.tasks["a"].state == "memory"


# ----------------------------------------------------------- forget all


def test_forget_all_cancels_every_clients_keys_and_forgets_every_task() -> None:
    s = make()
    scatter(s, {"a": ([W1], 1)})
    s.handle(ev.UpdateGraph(0.0, "client-2", [ev.TaskSpec("x", b"x")], ["x"]))
    s.handle(ev.ClientDesiresKeys(0.0, "client-2", ["a"]))
    out = s.handle(ev.ForgetAll(1.0, "scheduler-restart"))
    cancelled = {(i.client_id, tuple(sorted(i.keys)), i.reason) for i in of(out, KeysCancelled)}
    assert cancelled == {
        (C, ("a",), "scheduler-restart"),
        ("client-2", ("a", "x"), "scheduler-restart"),
    }
    assert s.tasks == {}
    freed = {(i.worker, k) for i in of(out, FreeKeys) for k in i.keys}
    assert (W1, "a") in freed
    assert not of(out, KeyInMemory)


# --------------------------------------------------------------- worker


def test_worker_fetches_a_requested_copy_and_reports_it() -> None:
    w = WorkerState(W2, 1, validate=True)
    out = w.handle(we.AcquireReplicasEvent(0.0, {"a": [W1]}, {"a": 10}))
    assert [(i.worker, i.keys) for i in out if isinstance(i, we.GatherDep)] == [(W1, ["a"])]
    out = w.handle(we.GatherDepDone(1.0, W1, {"a": 10}))
    assert we.AddKeysMsg({"a": 10}) in out
    assert w.tasks["a"].state == "memory"
    # asked again while it holds the key: reports it at once
    out = w.handle(we.AcquireReplicasEvent(2.0, {"a": [W1]}, {"a": 10}))
    assert out == [we.AddKeysMsg({"a": 10})]


def test_worker_gives_up_a_copy_it_cannot_get() -> None:
    w = WorkerState(W2, 1, validate=True)
    w.handle(we.AcquireReplicasEvent(0.0, {"a": [W1]}, {"a": 10}))
    out = w.handle(we.GatherDepDone(1.0, W1, {}, ["a"]))
    assert we.MissingDataMsg("a", W1) in out
    assert "a" not in w.tasks  # nothing here needs it: dropped, not left missing
    # no holder at all: nothing to fetch, nothing kept
    assert w.handle(we.AcquireReplicasEvent(2.0, {"b": [W2]}, {})) == []
    assert "b" not in w.tasks


# ------------------------------------------------------------------ pausing


def test_a_paused_worker_is_given_no_new_task_until_it_resumes() -> None:
    s = SchedulerState(validate=True)
    for w in (W1, W2):
        s.handle(ev.AddWorker(0.0, w, w, 1, 2**30, "host"))
    s.handle(ev.WorkerPaused(0.5, W1, True))
    assert s.workers[W1].status == "paused"
    keys = [f"inc-{i}" for i in range(10)]  # one group, of root tasks: queued
    tasks = [ev.TaskSpec(k, b"opaque", ()) for k in keys]
    for order, t in enumerate(tasks):
        t.order = order
    out = s.handle(ev.UpdateGraph(1.0, "c", tasks, keys))
    assert {i.worker for i in out if isinstance(i, ComputeTask)} == {W2}
    assert not s.workers[W1].processing
    assert len(s.queued) > 0
    out = s.handle(ev.WorkerPaused(2.0, W1, False))
    assert s.workers[W1].status == "running"
    given = [i.worker for i in out if isinstance(i, ComputeTask)]
    assert given and set(given) == {W1}  # queued work goes to it


def test_a_paused_worker_keeps_what_it_has_and_may_be_retired() -> None:
    s = SchedulerState(validate=True)
    s.handle(ev.AddWorker(0.0, W1, W1, 1, 2**30, "host"))
    s.handle(ev.UpdateGraph(1.0, "c", [ev.TaskSpec("x", b"opaque", ())], ["x"]))
    s.handle(ev.WorkerPaused(1.5, W1, True))
    assert s.tasks["x"].processing_on is s.workers[W1]
    s.handle(ev.RetireWorkers(2.0, [W1]))
    assert s.workers[W1].status == "closing_gracefully"
    assert s.tasks["x"].state in ("queued", "no-worker")
    assert s.tasks["x"].suspicious == 0


# ------------------------------------------------------------ operator moves


def test_an_operator_releases_a_task_in_memory_and_it_runs_again() -> None:
    s = make()
    s.handle(ev.UpdateGraph(0.0, C, [ev.TaskSpec("x", b"opaque", ())], ["x"]))
    where = s.tasks["x"].processing_on
    assert where is not None
    s.handle(ev.TaskFinished(1.0, where.address, "x", 8, "int", 0.5, 1.0))
    out = s.handle(ev.OperatorTransition(2.0, "x", "released", stimulus_id="ops-1"))
    assert FreeKeys(where.address, ["x"]) in out
    assert [i.key for i in of(out, ComputeTask)] == ["x"]  # still wanted: runs again
    assert ("x", "memory", "released", "ops-1") in [e[:4] for e in s.story("x")]


def test_an_operator_fails_a_running_task_and_its_dependents() -> None:
    s = make()
    tasks = [ev.TaskSpec("x", b"opaque", ()), ev.TaskSpec("y", b"opaque", ("x",))]
    s.handle(ev.UpdateGraph(0.0, C, tasks, ["y"]))
    where = s.tasks["x"].processing_on
    assert where is not None
    out = s.handle(ev.OperatorTransition(1.0, "x", "erred", "stuck on a bad node"))
    assert FreeKeys(where.address, ["x"]) in out
    [erred] = of(out, KeyErred)
    assert (erred.key, erred.exception_text) == ("y", "stuck on a bad node")
    assert {k: ts.state for k, ts in s.tasks.items()} == {"x": "erred", "y": "erred"}
