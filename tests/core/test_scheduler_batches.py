"""Tasks submitted in bulk (``TaskBatch``, what ``Client.map`` sends), driven directly.

Each task of a batch runs row ``i`` of a shared argument chunk, which refers to a shared
function: both travel to a worker once, and go when the last task using them goes.
"""

from __future__ import annotations

from typing import Any

from conveyor.core import events as ev
from conveyor.core.instructions import (
    ComputeTask,
    FreeFunctions,
    FreeKeys,
    Instruction,
    KeyErred,
)
from conveyor.core.placement import PLACEMENT_SAMPLE
from conveyor.core.scheduler import SchedulerState, merge_free_keys
from conveyor.core.types import Key

W1 = "tcp://10.0.0.1:1000"
W2 = "tcp://10.0.0.2:1000"
C = "client-1"
BLOBS = {"f": b"function", "c1": b"rows 1", "c2": b"rows 2"}


def make(nthreads: int = 4, replayable: bool = False) -> SchedulerState:
    s = SchedulerState(validate=True, replayable=replayable)
    s.handle(ev.AddWorker(0.0, W1, W1, nthreads, 2**30, "host"))
    return s


def batch(keys: list[Key], chunk: str = "c1", **kwargs: Any) -> ev.TaskBatch:
    return ev.TaskBatch(list(keys), kwargs.pop("function", "f"), chunk, **kwargs)


def send(
    s: SchedulerState,
    *batches: ev.TaskBatch,
    tasks: list[ev.TaskSpec] | None = None,
    functions: dict[str, bytes] | None = None,
    client: str = C,
) -> list[Instruction]:
    blobs = BLOBS if functions is None else functions
    wanted = [t.key for t in tasks or ()]
    return s.handle(ev.UpdateGraph(0.0, client, tasks or [], wanted, 0, blobs, list(batches)))


def computes(out: list[Instruction]) -> list[ComputeTask]:
    return [i for i in out if isinstance(i, ComputeTask)]


def test_a_batch_runs_rows_of_its_chunk_and_ships_chunk_and_function_once() -> None:
    s = make(nthreads=1)  # room for two tasks (worker_saturation 1.1)
    out = computes(send(s, batch(["a-0", "a-1", "a-2"], one_group=True)))
    assert [(c.key, c.run_spec, c.function) for c in out] == [("a-0", 0, "c1"), ("a-1", 1, "c1")]
    assert out[0].blobs == {"c1": b"rows 1", "f": b"function"} and not out[1].blobs
    assert s.tasks["a-2"].state == "queued"
    assert list(s.task_groups) == ["a"] and s.task_groups["a"].ntasks == 3
    assert s.functions["c1"].refs == 3 and s.functions["c1"].requires == "f"
    assert s.functions["f"].refs == 1  # held by the chunk, not by each task
    # tasks are ordered by row, after one another
    assert [s.tasks[f"a-{i}"].priority[2] for i in range(3)] == [0, 1, 2]
    follow = computes(s.handle(ev.TaskFinished(1.0, W1, "a-0", 8, "int", 0.0, 0.001)))
    assert [(c.key, c.run_spec, c.blobs) for c in follow] == [("a-2", 2, None)]


def test_a_second_chunk_of_the_same_function_ships_only_the_chunk() -> None:
    s = make()
    send(s, batch(["a-0"]))
    (c,) = computes(send(s, batch(["a-1"], chunk="c2", order=1)))
    assert c.blobs == {"c2": b"rows 2"} and s.functions["f"].refs == 2


def test_shared_and_row_dependencies_hold_the_batch_back() -> None:
    s = make()
    send(s, tasks=[ev.TaskSpec("root", b"r"), ev.TaskSpec("other", b"o")], functions=BLOBS)
    out = send(
        s,
        batch(["b-0", "b-1"], dependencies=("root",), row_dependencies=[(), ("other",)]),
    )
    assert not computes(out)
    b0, b1 = s.tasks["b-0"], s.tasks["b-1"]
    assert [d.key for d in b0.dependencies] == ["root"]
    assert [d.key for d in b1.dependencies] == ["root", "other"]
    assert b0.state == b1.state == "waiting"
    assert s.tasks["root"].dependents == {b0, b1} and s.tasks["other"].dependents == {b1}
    out = s.handle(ev.TaskFinished(1.0, W1, "root", 8, "int", 0.0, 0.1))
    assert [c.key for c in computes(out)] == ["b-0"]


def test_unknown_blobs_or_dependencies_err_every_task_of_the_batch() -> None:
    s = make()
    out = send(s, batch(["x-0", "x-1"], chunk="nope"))
    errs = [i for i in out if isinstance(i, KeyErred)]
    assert [e.key for e in errs] == ["x-0", "x-1"]
    assert all("MissingFunction" in e.exception_text for e in errs)
    out = send(s, batch(["y-0"], dependencies=("gone",)))
    (err,) = [i for i in out if isinstance(i, KeyErred)]
    assert "MissingDependency" in err.exception_text and "'gone'" in err.exception_text
    # a chunk cannot be re-tied to another function
    send(s, batch(["z-0"], chunk="c2"))
    out = send(s, batch(["z-1"], chunk="c2", function="g"), functions={**BLOBS, "g": b"g"})
    (err,) = [i for i in out if isinstance(i, KeyErred)]
    assert "InvalidBatch" in err.exception_text
    assert "g" not in s.functions  # nothing uses it


def test_releasing_a_batch_frees_the_chunk_then_its_function_on_workers() -> None:
    s = make(nthreads=1)
    send(s, batch(["a-0", "a-1"]))
    s.handle(ev.TaskFinished(1.0, W1, "a-0", 8, "int", 0.0, 0.001))
    s.handle(ev.TaskFinished(1.0, W1, "a-1", 8, "int", 0.0, 0.001))
    out = s.handle(ev.ClientReleasesKeys(2.0, C, ["a-0"]))
    assert not [i for i in out if isinstance(i, FreeFunctions)]
    out = s.handle(ev.ClientReleasesKeys(2.0, C, ["a-1"]))
    freed = [i.ids for i in out if isinstance(i, FreeFunctions)]
    assert freed == [["c1"], ["f"]] and not s.functions and not s.tasks


def test_keys_already_known_are_only_wanted_again() -> None:
    s = make(nthreads=1)
    send(s, batch(["a-0"]))
    s.handle(ev.TaskFinished(1.0, W1, "a-0", 8, "int", 0.0, 0.001))
    out = send(s, batch(["a-0", "a-1"], chunk="c2"), client="client-2")
    assert [c.key for c in computes(out)] == ["a-1"]
    assert {c.client_id for c in s.tasks["a-0"].who_wants} == {C, "client-2"}
    assert s.tasks["a-0"].run_spec == 0 and s.tasks["a-0"].function == "c1"


def test_unwanted_batch_tasks_without_dependents_are_forgotten() -> None:
    s = make()
    send(s, batch(["u-0", "u-1"], wanted=False))
    assert not s.tasks and not s.functions


def test_a_task_wanted_by_one_client_shares_its_who_wants_tuple() -> None:
    s = make()
    send(s, batch(["a-0", "a-1"]))
    assert s.tasks["a-0"].who_wants is s.tasks["a-1"].who_wants
    send(s, batch(["a-0"], chunk="c2"), client="client-2")
    s.handle(ev.ClientReleasesKeys(1.0, "client-2", ["a-0"]))
    assert s.tasks["a-0"].who_wants is s.tasks["a-1"].who_wants


def test_blobs_cannot_require_themselves_and_long_chains_are_freed() -> None:
    s = make()
    out = send(s, batch(["s-0"], chunk="c1", function="c1"))
    (err,) = [i for i in out if isinstance(i, KeyErred)]
    assert "InvalidBatch" in err.exception_text and not s.functions
    s.handle(ev.ClientReleasesKeys(1.0, C, ["s-0"]))
    # a function cannot be a chunk ...
    out = send(s, batch(["t-0"], chunk="c1"), batch(["t-1"], chunk="c2", function="c1"))
    assert [e.key for e in out if isinstance(e, KeyErred)] == ["t-1"]
    s.handle(ev.ClientReleasesKeys(1.0, C, ["t-0", "t-1"]))
    # ... but a function may become a chunk later: a client can build a long chain
    n = 3000
    blobs = {f"b{i}": b"x" for i in range(n)}
    chain = [batch([f"k-{i}"], chunk=f"b{i}", function=f"b{i - 1}") for i in range(n - 1, 0, -1)]
    send(s, *chain, functions=blobs)
    assert [s.functions[f"b{i}"].requires for i in (n - 1, 2, 1)] == [f"b{n - 2}", "b1", "b0"]
    s.handle(ev.ClientReleasesKeys(2.0, C, [f"k-{i}" for i in range(n - 1, 0, -1)]))
    assert not s.functions and not s.tasks  # freed along the chain, without recursion


def test_placement_weighs_a_bounded_sample_that_rotates_through_all_workers() -> None:
    s = SchedulerState(validate=True)
    workers = [f"tcp://10.1.0.{i}:1000" for i in range(5 * PLACEMENT_SAMPLE)]
    for w in workers:
        s.handle(ev.AddWorker(0.0, w, w, 1, 2**30, "host"))
    weighed: list[str] = []
    start_time = s._start_time

    def counting(ts: Any, ws: Any) -> float:
        weighed.append(ws.address)
        return start_time(ts, ws)

    s._start_time = counting  # type: ignore[method-assign]
    # root-ish tasks (one big group): one per worker, each worker in turn
    out = computes(send(s, batch([f"r-{i}" for i in range(len(workers))], one_group=True)))
    assert sorted(c.worker for c in out) == sorted(workers)
    # every worker busy: a lone task is weighed against one sample, not all workers
    samples = []
    for i in range(3):
        weighed.clear()
        key = f"x-{i}"
        (placed,) = computes(s.handle(ev.UpdateGraph(0.0, C, [ev.TaskSpec(key, b"x")], [key])))
        assert len(weighed) == PLACEMENT_SAMPLE and placed.worker in weighed
        samples.append(set(weighed))
    assert not samples[0] & samples[1]  # the next task weighs other workers
    s.handle(ev.RemoveWorker(1.0, workers[0], "gone"))
    assert workers[0] not in {w.address for w in s._ring}


def test_the_bulk_path_and_the_general_path_end_in_the_same_state() -> None:
    """One batch of tasks waiting on a shared root, once by each path."""

    def run(one_group: bool) -> tuple[list[Any], list[Any]]:
        # tasks hashed by key: both runs then iterate the root's dependents in one order
        s = make(nthreads=2, replayable=True)
        send(s, tasks=[ev.TaskSpec("root", b"r")], functions=BLOBS)
        keys = [f"m-{i}" for i in range(30)]
        out = send(s, batch(keys, dependencies=("root",), one_group=one_group))
        states = [(k, s.tasks[k].state, s.tasks[k].nwaiting) for k in keys]
        assert s.tasks["root"].waiters == {s.tasks[k] for k in keys}
        out += s.handle(ev.TaskFinished(1.0, W1, "root", 8, "int", 0.0, 0.1))
        sent = [(c.key, c.run_spec, c.function) for c in computes(out)]
        return states, sent

    assert run(True) == run(False)
    states, sent = run(True)
    assert {st for _, st, _ in states} == {"waiting"} and {n for _, _, n in states} == {1}
    assert sent and all(key.startswith("m-") for key, _, _ in sent)


def test_free_keys_merge_per_worker_without_reordering_what_a_worker_receives() -> None:
    def compute(worker: str, key: str) -> ComputeTask:
        return ComputeTask(worker, key, b"", (0,), {}, {}, 0.5)

    out = merge_free_keys(
        [
            FreeKeys(W1, ["a"]),
            FreeKeys(W2, ["x"]),
            FreeKeys(W1, ["b"]),
            KeyErred(C, "e", None, None, "E: e", ""),  # to a client: merges go past it
            compute(W1, "c"),
            FreeKeys(W1, ["c"]),
            FreeKeys(W2, ["y"]),
        ]
    )
    assert [
        (type(i).__name__, getattr(i, "worker", None), getattr(i, "keys", None)) for i in out
    ] == [
        ("FreeKeys", W1, ["a", "b"]),
        ("FreeKeys", W2, ["x", "y"]),
        ("KeyErred", None, None),
        ("ComputeTask", W1, None),
        ("FreeKeys", W1, ["c"]),
    ]


def test_releasing_many_keys_frees_them_in_one_message_per_worker() -> None:
    s = make(nthreads=1)
    s.handle(ev.AddWorker(0.0, W2, W2, 1, 2**30, "host"))
    keys = [f"a-{i}" for i in range(40)]
    pending = computes(send(s, batch(keys, one_group=True)))
    while pending:
        c = pending.pop(0)
        pending += computes(s.handle(ev.TaskFinished(1.0, c.worker, c.key, 8, "int", 0.0, 0.0)))
    out = s.handle(ev.ClientReleasesKeys(2.0, C, keys))
    frees = [i for i in out if isinstance(i, FreeKeys)]
    assert sorted(f.worker for f in frees) == [W1, W2]
    assert sorted(k for f in frees for k in f.keys) == sorted(keys)
