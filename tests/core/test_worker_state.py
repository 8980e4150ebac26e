"""WorkerState driven directly with events; each test asserts the exact instructions.

The shell's part (running tasks, storing values, talking to peers) is played by the test:
it feeds back ``ExecuteSuccess``, ``GatherDepDone`` and so on. Every WorkerState here is
built with ``validate=True``, so its invariants are checked after every event.
"""

from __future__ import annotations

from typing import Any

from conveyor.core import worker_events as we
from conveyor.core.types import Key
from conveyor.core.worker import WorkerState

ME = "tcp://10.0.0.1:1000"
P1 = "tcp://10.0.0.2:1000"
P2 = "tcp://10.0.0.3:1000"


def make(nthreads: int = 1, **kwargs: Any) -> WorkerState:
    return WorkerState(ME, nthreads, validate=True, **kwargs)


def compute(
    ws: WorkerState,
    key: Key,
    priority: tuple[int, ...] = (0, 1, 0),
    who_has: dict[Key, list[str]] | None = None,
    nbytes: dict[Key, int] | None = None,
    now: float = 0.0,
) -> list[we.WorkerInstruction]:
    event = we.ComputeTaskEvent(
        now, key, b"spec:" + repr(key).encode(), priority, who_has or {}, nbytes or {}
    )
    return ws.handle(event)


def success(
    ws: WorkerState, key: Key, nbytes: int = 8, start: float = 1.0, stop: float = 2.0
) -> list[we.WorkerInstruction]:
    return ws.handle(we.ExecuteSuccess(stop, key, nbytes, "int", start, stop))


def free(ws: WorkerState, *keys: Key, now: float = 0.0) -> list[we.WorkerInstruction]:
    return ws.handle(we.FreeKeysEvent(now, list(keys)))


def gathered(
    ws: WorkerState,
    peer: str,
    received: dict[Key, int],
    missing: list[Key] | None = None,
    failed: bool = False,
) -> list[we.WorkerInstruction]:
    return ws.handle(we.GatherDepDone(3.0, peer, received, missing or [], failed))


def states(ws: WorkerState) -> dict[Key, str]:
    return {k: ts.state for k, ts in ws.tasks.items()}


# ------------------------------------------------------------------- compute


def test_task_without_dependencies_executes_at_once() -> None:
    ws = make()
    assert compute(ws, "x") == [we.Execute("x")]
    assert states(ws) == {"x": "executing"}
    assert ws.tasks["x"].run_spec == b"spec:'x'"
    assert success(ws, "x", nbytes=16, start=1.0, stop=2.5) == [
        we.TaskFinishedMsg("x", 16, "int", 1.0, 2.5)
    ]
    assert states(ws) == {"x": "memory"}
    assert ws.executing_keys == set()


def test_failure_is_reported() -> None:
    ws = make()
    compute(ws, "x")
    out = ws.handle(we.ExecuteFailure(2.0, "x", b"exc", b"tb", "ValueError: bad", "tb", 1.0, 2.0))
    assert out == [we.TaskErredMsg("x", b"exc", b"tb", "ValueError: bad", "tb", 1.0, 2.0)]
    assert states(ws) == {"x": "error"}
    assert free(ws, "x") == []
    assert ws.tasks == {}


def test_remote_dependency_is_fetched_then_task_runs() -> None:
    ws = make()
    out = compute(ws, "x", who_has={"a": [P1]}, nbytes={"a": 100})
    assert out == [we.GatherDep(P1, ["a"], 100)]
    assert states(ws) == {"x": "waiting", "a": "flight"}
    out = gathered(ws, P1, {"a": 100})
    # the scheduler learns of the new replica; the task starts
    assert out == [we.AddKeysMsg({"a": 100}), we.Execute("x")]
    assert states(ws) == {"x": "executing", "a": "memory"}


def test_local_dependency_needs_no_fetch() -> None:
    ws = make()
    compute(ws, "a")
    success(ws, "a")
    assert compute(ws, "x", who_has={"a": [ME]}, nbytes={"a": 8}) == [we.Execute("x")]


def test_dependency_only_on_this_worker_but_not_here_is_missing() -> None:
    # the scheduler claims this worker holds it, but it does not: nothing to fetch from
    ws = make()
    assert compute(ws, "x", who_has={"a": [ME]}, nbytes={"a": 8}) == []
    assert states(ws) == {"x": "waiting", "a": "missing"}
    assert ws.missing == {ws.tasks["a"]}


def test_thread_limit_and_priority_order() -> None:
    ws = make(nthreads=1)
    assert compute(ws, "A", priority=(0, 1, 5)) == [we.Execute("A")]
    assert compute(ws, "B", priority=(0, 1, 3)) == []
    assert compute(ws, "C", priority=(0, 1, 1)) == []
    assert compute(ws, "D", priority=(0, 1, 2)) == []
    assert states(ws) == {"A": "executing", "B": "ready", "C": "ready", "D": "ready"}
    assert success(ws, "A") == [we.TaskFinishedMsg("A", 8, "int", 1.0, 2.0), we.Execute("C")]
    assert success(ws, "C")[-1] == we.Execute("D")
    assert success(ws, "D")[-1] == we.Execute("B")
    assert success(ws, "B") == [we.TaskFinishedMsg("B", 8, "int", 1.0, 2.0)]


def test_nthreads_tasks_run_at_once() -> None:
    ws = make(nthreads=3)
    outs = [compute(ws, f"t{i}", priority=(0, 1, i)) for i in range(5)]
    assert outs == [[we.Execute("t0")], [we.Execute("t1")], [we.Execute("t2")], [], []]
    assert ws.executing_keys == {"t0", "t1", "t2"}
    assert success(ws, "t1")[-1] == we.Execute("t3")


def test_short_tasks_are_handed_to_the_threads_ahead_up_to_a_bound() -> None:
    ws = make(nthreads=2, prefetch_per_thread=3)
    short = [
        ws.handle(we.ComputeTaskEvent(0.0, f"s{i}", b"s", (0, 1, i), duration=0.0001))
        for i in range(10)
    ]
    assert [len(out) for out in short] == [1] * 6 + [0] * 4  # 2 threads x 3
    assert len(ws.executing_keys) == 6
    assert success(ws, "s0")[-1] == we.Execute("s6")
    # a long task waits for a free thread even while short ones are ahead of it
    long_ws = make(nthreads=1)
    assert long_ws.handle(we.ComputeTaskEvent(0.0, "a", b"a", (0, 1, 0), duration=0.5))
    assert not long_ws.handle(we.ComputeTaskEvent(0.0, "b", b"b", (0, 1, 1), duration=0.5))


def test_compute_of_a_key_already_in_memory_reports_it() -> None:
    ws = make()
    ws.handle(we.UpdateDataEvent(0.0, {"x": 12}))
    assert compute(ws, "x") == [we.TaskFinishedMsg("x", 12, None, 0.0, 0.0)]


def test_duplicate_compute_while_running_is_ignored() -> None:
    ws = make()
    compute(ws, "x")
    assert compute(ws, "x") == []
    assert states(ws) == {"x": "executing"}


# -------------------------------------------------------------- cancellation


def test_free_while_executing_cancels_and_drops_the_result() -> None:
    ws = make()
    compute(ws, "x")
    compute(ws, "y", priority=(0, 1, 1))
    assert free(ws, "x") == []
    assert states(ws) == {"x": "cancelled", "y": "ready"}
    # the thread is still busy until the result comes back, then the slot is reused
    out = success(ws, "x")
    assert out == [we.DeleteData(["x"]), we.Execute("y")]
    assert "x" not in ws.tasks
    assert [s for _, s, _, _ in ws.story("x")][-2:] == ["memory", "released"]


def test_failure_of_a_cancelled_task_is_not_reported() -> None:
    ws = make()
    compute(ws, "x")
    free(ws, "x")
    out = ws.handle(we.ExecuteFailure(2.0, "x", b"exc", b"tb", "ValueError", "", 1.0, 2.0))
    assert out == []
    assert ws.tasks == {}


def test_cancelled_task_resumes_on_a_new_compute_request() -> None:
    ws = make()
    compute(ws, "x")
    free(ws, "x")
    # asked again before it finished: no second execution, the running one counts
    assert compute(ws, "x") == []
    assert states(ws) == {"x": "executing"}
    assert success(ws, "x") == [we.TaskFinishedMsg("x", 8, "int", 1.0, 2.0)]
    assert states(ws) == {"x": "memory"}


def test_free_while_fetching_cancels_the_transfer_and_drops_what_arrives() -> None:
    ws = make()
    compute(ws, "x", who_has={"a": [P1]}, nbytes={"a": 10})
    assert free(ws, "x") == []
    assert states(ws) == {"a": "cancelled"}
    out = gathered(ws, P1, {"a": 10})
    assert out == [we.DeleteData(["a"])]
    assert ws.tasks == {}
    assert ws.in_flight_workers == {}


def test_free_of_data_still_needed_by_a_running_task_waits_for_it() -> None:
    ws = make()
    compute(ws, "a")
    success(ws, "a")
    compute(ws, "x", who_has={"a": [ME]}, nbytes={"a": 8})
    # the scheduler frees a (it thinks x is done with it), but x is still running
    assert free(ws, "a") == []
    assert states(ws) == {"a": "memory", "x": "executing"}
    assert success(ws, "x") == [
        we.TaskFinishedMsg("x", 8, "int", 1.0, 2.0),
        we.DeleteData(["a"]),
    ]
    assert states(ws) == {"a": "released", "x": "memory"}
    assert free(ws, "x") == [we.DeleteData(["x"])]
    assert ws.tasks == {}


def test_cancelled_transfer_resumed_as_compute_falls_back_to_computing() -> None:
    # x was being fetched for y; y was freed (x cancelled in flight); then the scheduler,
    # having lost x's only copy, asks this worker to compute x. If the transfer then
    # brings nothing, the worker must compute x rather than wait for a copy forever.
    ws = make()
    compute(ws, "y", who_has={"x": [P1]}, nbytes={"x": 10})
    free(ws, "y")
    assert states(ws) == {"x": "cancelled"}
    assert compute(ws, "x", priority=(0, 1, 0)) == []
    assert states(ws) == {"x": "flight"}
    assert gathered(ws, P1, {}, failed=True) == [we.Execute("x")]
    assert success(ws, "x") == [we.TaskFinishedMsg("x", 8, "int", 1.0, 2.0)]


def test_cancelled_transfer_resumed_as_compute_uses_the_data_if_it_comes() -> None:
    ws = make()
    compute(ws, "y", who_has={"x": [P1]}, nbytes={"x": 10})
    free(ws, "y")
    compute(ws, "x")
    assert gathered(ws, P1, {"x": 10}) == [we.TaskFinishedMsg("x", 10, None, 0.0, 0.0)]
    assert states(ws) == {"x": "memory"}


# ---------------------------------------------------------------- transfers


def test_peer_without_the_key_triggers_missing_data_and_a_refetch_elsewhere() -> None:
    ws = make()
    out = compute(ws, "x", who_has={"a": [P1, P2]}, nbytes={"a": 10})
    assert len(out) == 1
    first = out[0]
    assert isinstance(first, we.GatherDep)
    assert (first.keys, first.total_nbytes) == (["a"], 10)
    other = P2 if first.worker == P1 else P1
    out = gathered(ws, first.worker, {}, missing=["a"])
    assert out == [we.MissingDataMsg("a", first.worker), we.GatherDep(other, ["a"], 10)]
    assert ws.tasks["a"].who_has == {other}
    out = gathered(ws, other, {"a": 10})
    assert out == [we.AddKeysMsg({"a": 10}), we.Execute("x")]


def test_failed_peer_with_no_other_holder_leaves_the_key_missing() -> None:
    ws = make()
    compute(ws, "x", who_has={"a": [P1]}, nbytes={"a": 10})
    out = gathered(ws, P1, {}, failed=True)
    assert out == [we.MissingDataMsg("a", P1)]
    assert states(ws) == {"x": "waiting", "a": "missing"}
    # the scheduler answers with where else it lives
    out = ws.handle(we.RefreshWhoHasEvent(4.0, {"a": [P2]}))
    assert out == [we.GatherDep(P2, ["a"], 10)]
    assert gathered(ws, P2, {"a": 10}) == [we.AddKeysMsg({"a": 10}), we.Execute("x")]


def test_failed_peer_is_dropped_for_queued_fetches_too() -> None:
    ws = make(transfer_message_bytes_limit=10)
    who_has: dict[Key, list[str]] = {"a": [P1], "c": [P2], "b": [P1, P2]}
    out = compute(ws, "x", who_has=who_has, nbytes={"a": 10, "b": 10, "c": 10})
    # one key per transfer (byte limit), one transfer per peer: b waits for either
    assert out == [we.GatherDep(P1, ["a"], 10), we.GatherDep(P2, ["c"], 10)]
    assert states(ws) == {"x": "waiting", "a": "flight", "c": "flight", "b": "fetch"}
    out = gathered(ws, P1, {}, failed=True)
    # a had no other holder; b still has P2 and does not bother the scheduler
    assert out == [we.MissingDataMsg("a", P1)]
    assert states(ws) == {"x": "waiting", "a": "missing", "c": "flight", "b": "fetch"}
    assert ws.tasks["b"].who_has == {P2}
    assert P1 not in ws.data_needed
    out = gathered(ws, P2, {"c": 10})
    assert out == [we.AddKeysMsg({"c": 10}), we.GatherDep(P2, ["b"], 10)]


def test_new_compute_request_revives_a_missing_dependency() -> None:
    ws = make()
    compute(ws, "x", who_has={"a": [P1]}, nbytes={"a": 10})
    gathered(ws, P1, {}, failed=True)
    assert states(ws) == {"x": "waiting", "a": "missing"}
    # another task needs a, and the scheduler now knows it is on P2
    out = compute(ws, "y", priority=(0, 1, 1), who_has={"a": [P2]}, nbytes={"a": 10})
    assert out == [we.GatherDep(P2, ["a"], 10)]
    assert gathered(ws, P2, {"a": 10}) == [we.AddKeysMsg({"a": 10}), we.Execute("x")]


def test_transfers_are_bundled_up_to_the_byte_limit() -> None:
    ws = make(transfer_message_bytes_limit=100)
    who_has: dict[Key, list[str]] = {"a": [P1], "b": [P1], "c": [P1]}
    out = compute(ws, "x", who_has=who_has, nbytes={"a": 40, "b": 40, "c": 40})
    assert out == [we.GatherDep(P1, ["a", "b"], 80)]
    assert states(ws) == {"x": "waiting", "a": "flight", "b": "flight", "c": "fetch"}
    # one transfer per peer at a time: c goes when the first one is back
    out = gathered(ws, P1, {"a": 40, "b": 40})
    assert out == [we.AddKeysMsg({"a": 40, "b": 40}), we.GatherDep(P1, ["c"], 40)]
    assert gathered(ws, P1, {"c": 40}) == [we.AddKeysMsg({"c": 40}), we.Execute("x")]


def test_a_key_larger_than_the_limit_still_travels_alone() -> None:
    ws = make(transfer_message_bytes_limit=100)
    out = compute(ws, "x", who_has={"a": [P1], "b": [P1]}, nbytes={"a": 500, "b": 1})
    assert out == [we.GatherDep(P1, ["a"], 500)]


def test_transfers_from_different_peers_run_in_parallel() -> None:
    ws = make()
    out = compute(ws, "x", who_has={"a": [P1], "b": [P2]}, nbytes={"a": 1, "b": 2})
    assert sorted(out, key=repr) == [we.GatherDep(P1, ["a"], 1), we.GatherDep(P2, ["b"], 2)]
    assert gathered(ws, P2, {"b": 2}) == [we.AddKeysMsg({"b": 2})]
    assert gathered(ws, P1, {"a": 1}) == [we.AddKeysMsg({"a": 1}), we.Execute("x")]


def test_outgoing_connection_limit() -> None:
    ws = make(outgoing_connections=1)
    out = compute(ws, "x", who_has={"a": [P1], "b": [P2]}, nbytes={"a": 1, "b": 2})
    assert len(out) == 1
    first = out[0]
    assert isinstance(first, we.GatherDep)
    rest = gathered(ws, first.worker, {k: 1 for k in first.keys})
    assert len([g for g in rest if isinstance(g, we.GatherDep)]) == 1


def test_scattered_data_satisfies_a_waiting_task() -> None:
    ws = make()
    compute(ws, "x", who_has={"a": [P1]}, nbytes={"a": 10})
    # a is in flight from P1 when a client scatters it here directly: keep waiting for
    # the transfer (the state machine does not double-book), then run
    ws.handle(we.UpdateDataEvent(1.0, {"b": 5}))
    assert states(ws)["b"] == "memory"
    assert gathered(ws, P1, {"a": 10}) == [we.AddKeysMsg({"a": 10}), we.Execute("x")]


def test_story_records_state_changes_with_time() -> None:
    ws = make()
    compute(ws, "x", now=1.0)
    success(ws, "x", start=1.0, stop=2.0)
    assert ws.story("x") == [
        ("x", "released", "ready", 1.0),
        ("x", "ready", "executing", 1.0),
        ("x", "executing", "memory", 2.0),
    ]


def test_answers_echo_the_run_id_of_the_latest_compute_request() -> None:
    ws = make(nthreads=2)
    ws.handle(we.ComputeTaskEvent(0.0, "x", b"s", (0, 1, 0), run_id=7))
    assert success(ws, "x") == [we.TaskFinishedMsg("x", 8, "int", 1.0, 2.0, run_id=7)]
    # already in memory: answered at once, with the new id
    out = ws.handle(we.ComputeTaskEvent(3.0, "x", b"s", (0, 1, 0), run_id=9))
    assert out == [we.TaskFinishedMsg("x", 8, "int", 0.0, 0.0, run_id=9)]
    # freed while running, then asked again: the running execution answers the new run
    ws.handle(we.ComputeTaskEvent(4.0, "y", b"s", (0, 1, 1), run_id=10))
    free(ws, "y")
    ws.handle(we.ComputeTaskEvent(5.0, "y", b"s", (0, 1, 1), run_id=12))
    assert success(ws, "y") == [we.TaskFinishedMsg("y", 8, "int", 1.0, 2.0, run_id=12)]
    ws.handle(we.ComputeTaskEvent(6.0, "z", b"s", (0, 1, 2), run_id=13))
    out = ws.handle(we.ExecuteFailure(7.0, "z", b"e", b"tb", "E", "", 6.0, 7.0))
    assert out == [we.TaskErredMsg("z", b"e", b"tb", "E", "", 6.0, 7.0, run_id=13)]


def test_results_in_memory_keep_no_sets_or_run_spec_of_their_own() -> None:
    # A worker may hold a million results: each record must not carry empty sets (216
    # bytes each, and walked by every full garbage collection) or the spent run spec.
    ws = make(nthreads=2)
    compute(ws, "a")
    compute(ws, "x", who_has={"a": [ME]}, priority=(0, 1, 1))
    success(ws, "a")
    assert states(ws) == {"a": "memory", "x": "executing"}
    success(ws, "x")
    x, a = ws.tasks["x"], ws.tasks["a"]
    assert x.run_spec is None and a.run_spec is None
    assert x.dependencies == {a} and a.dependents == {x}
    own_sets = [
        name
        for ts in (x, a)
        for name in ("dependencies", "dependents", "waiting_for_data", "who_has")
        if type(getattr(ts, name)) is set and not getattr(ts, name)
    ]
    assert own_sets == []
    # releasing the dependent leaves the dependency with no set of its own either
    free(ws, "x")
    assert type(a.dependents) is frozenset and not a.dependents


def test_records_hash_by_identity_unless_replayable() -> None:
    fast, replayable = make(), make(replayable=True)
    for ws in (fast, replayable):
        compute(ws, "a")
    a = fast.tasks["a"]
    assert type(a).__hash__ is object.__hash__
    b = replayable.tasks["a"]
    assert hash(b) == hash("a") and b == b
    assert b != replayable.task_type("a")  # equality stays identity


# ------------------------------------------------------------------ secession


def test_a_seceded_task_frees_its_slot_and_the_scheduler_is_told() -> None:
    ws = make(nthreads=1)
    assert compute(ws, "a", priority=(0, 1, 0)) == [we.Execute("a")]
    assert compute(ws, "b", priority=(0, 1, 1)) == []  # the one thread is taken
    out = ws.handle(we.SecedeEvent(1.0, "a"))
    assert out == [we.LongRunningMsg("a", 0), we.Execute("b")]
    assert states(ws) == {"a": "long-running", "b": "executing"}
    assert ws.long_running == {"a"} and ws.executing_keys == {"b"}


def test_rejoin_waits_for_a_slot_and_takes_it_before_ready_tasks() -> None:
    ws = make(nthreads=1)
    compute(ws, "a", priority=(0, 1, 0))
    compute(ws, "b", priority=(0, 1, 1))
    ws.handle(we.SecedeEvent(1.0, "a"))
    compute(ws, "c", priority=(0, 1, 2))  # ready behind b
    assert ws.handle(we.RejoinEvent(2.0, "a")) == []  # b holds the slot
    out = success(ws, "b")
    assert we.Rejoined("a") in out
    assert we.Execute("c") not in out  # the rejoining task came first
    assert states(ws)["a"] == "executing" and states(ws)["c"] == "ready"
    out = success(ws, "a")
    assert we.Execute("c") in out and states(ws)["a"] == "memory"


def test_rejoin_with_a_free_slot_is_granted_at_once() -> None:
    ws = make(nthreads=2)
    compute(ws, "a")
    ws.handle(we.SecedeEvent(1.0, "a"))
    assert ws.handle(we.RejoinEvent(2.0, "a")) == [we.Rejoined("a")]
    assert states(ws) == {"a": "executing"}


def test_a_long_running_task_finishes_like_an_executing_one() -> None:
    ws = make(nthreads=1)
    compute(ws, "a")
    ws.handle(we.SecedeEvent(1.0, "a"))
    out = success(ws, "a")
    assert [type(i) for i in out] == [we.TaskFinishedMsg]
    assert states(ws) == {"a": "memory"} and not ws.long_running


def test_a_long_running_task_freed_is_cancelled_and_resumable() -> None:
    ws = make(nthreads=1)
    compute(ws, "a")
    ws.handle(we.SecedeEvent(1.0, "a"))
    free(ws, "a")
    assert states(ws) == {"a": "cancelled"} and ws.long_running == {"a"}
    assert ws.handle(we.RejoinEvent(2.0, "a")) == [we.Rejoined("a")]  # a slot is free
    assert ws.executing_keys == {"a"} and not ws.long_running
    compute(ws, "a")  # asked for again while it still runs: it resumes
    assert states(ws) == {"a": "executing"}
    assert [type(i) for i in success(ws, "a")] == [we.TaskFinishedMsg]


def test_a_freed_seceded_task_stays_outside_the_thread_budget() -> None:
    ws = make(nthreads=1, prefetch_per_thread=1)
    compute(ws, "a", priority=(0, 1, 0))
    compute(ws, "b", priority=(0, 1, 1))
    ws.handle(we.SecedeEvent(1.0, "a"))  # b takes the thread
    free(ws, "a")  # validate (on every event) held the thread budget
    assert states(ws) == {"a": "cancelled", "b": "executing"}
    assert ws.executing_keys == {"b"} and ws.long_running == {"a"}
    compute(ws, "a")  # asked again: still seceded
    assert states(ws)["a"] == "long-running"
    free(ws, "a")
    assert ws.handle(we.RejoinEvent(2.0, "a")) == []  # it waits for b's thread
    assert we.Rejoined("a") in success(ws, "b")
    assert ws.executing_keys == {"a"} and not ws.long_running
    assert success(ws, "a") == [we.DeleteData(["a"])]  # cancelled: its result is dropped
    assert states(ws) == {"b": "memory"}


def test_secede_of_a_task_no_longer_executing_is_ignored() -> None:
    ws = make(nthreads=1)
    compute(ws, "a")
    free(ws, "a")
    assert ws.handle(we.SecedeEvent(1.0, "a")) == []
    assert states(ws) == {"a": "cancelled"}


def test_a_paused_worker_starts_nothing_new_until_resumed() -> None:
    ws = make(nthreads=1, prefetch_per_thread=1)
    assert compute(ws, "a", priority=(0, 1, 0)) == [we.Execute("a")]
    assert ws.handle(we.PauseEvent(1.0, True)) == [we.PausedMsg(True)]  # told once
    assert ws.handle(we.PauseEvent(1.1, True)) == []
    assert compute(ws, "b", priority=(0, 1, 1)) == []
    assert [type(i) for i in success(ws, "a")] == [we.TaskFinishedMsg]  # a finishes
    assert states(ws) == {"a": "memory", "b": "ready"}  # but b does not start
    # nothing is fetched either
    assert compute(ws, "c", priority=(0, 1, 2), who_has={"d": [P1]}) == []
    resumed = ws.handle(we.PauseEvent(2.0, False))
    assert resumed == [we.PausedMsg(False), we.GatherDep(P1, ["d"], 0), we.Execute("b")]
