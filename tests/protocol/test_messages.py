"""Message schemas: core instructions survive the trip through wire dicts (and msgpack)."""

from __future__ import annotations

import pytest
from dask.utils import key_split

from conveyor.core import instructions as si
from conveyor.core import worker_events as we
from conveyor.protocol import decode, encode
from conveyor.protocol.messages import (
    CLIENT_STREAM_OPS,
    MAX_BATCH,
    WORKER_STREAM_OPS,
    scheduler_instruction_to_msg,
    worker_event_from_msg,
    worker_instruction_to_msg,
)


def _wire(msg: dict[str, object]) -> dict[str, object]:
    out = decode(encode(msg))
    assert isinstance(out, dict)
    return out


def test_compute_task_round_trip_with_function_and_run_id() -> None:
    instr = si.ComputeTask(
        "tcp://w",
        ("x", 1),
        b"spec",
        (0, 1, 2),
        {"d": ["tcp://v"]},
        {"d": 8},
        0.25,
        "chunk",
        {"chunk": b"rows", "fid": b"func"},
        7,
    )
    msg = _wire(scheduler_instruction_to_msg(instr))
    assert msg["function"] == "chunk" and msg["blobs"] == {"chunk": b"rows", "fid": b"func"}
    event = worker_event_from_msg(msg, now=1.0)
    assert isinstance(event, we.ComputeTaskEvent)
    assert event.key == ("x", 1) and event.run_spec == ("chunk", b"spec")
    assert event.priority == (0, 1, 2) and event.run_id == 7
    assert event.who_has == {"d": ["tcp://v"]} and event.nbytes == {"d": 8}


def test_acquire_replicas_and_cancelled_keys_round_trip() -> None:
    instr = si.AcquireReplicas("tcp://w", {("x", 1): ["tcp://a", "tcp://b"]}, {("x", 1): 80})
    event = worker_event_from_msg(_wire(scheduler_instruction_to_msg(instr)), now=1.0)
    assert event == we.AcquireReplicasEvent(1.0, {("x", 1): ["tcp://a", "tcp://b"]}, {("x", 1): 80})
    cancelled = _wire(
        scheduler_instruction_to_msg(si.KeysCancelled("c", ["k"], "scheduler-restart"))
    )
    assert cancelled == {"op": "cancelled-keys", "keys": ("k",), "reason": "scheduler-restart"}
    plain = _wire(scheduler_instruction_to_msg(si.KeysCancelled("c", ["k"])))
    assert "reason" not in plain


def test_task_results_carry_the_run_id_back() -> None:
    done = _wire(worker_instruction_to_msg(we.TaskFinishedMsg("k", 10, "int", 1.0, 2.0, 9)))
    ev = WORKER_STREAM_OPS["task-finished"]("tcp://w", done, 3.0)
    assert (ev.key, ev.nbytes, ev.run_id, ev.worker) == ("k", 10, 9, "tcp://w")  # type: ignore[attr-defined]
    err = we.TaskErredMsg("k", b"e", None, "E: x", "tb", 1.0, 2.0, 4)
    ev2 = WORKER_STREAM_OPS["task-erred"]("tcp://w", _wire(worker_instruction_to_msg(err)), 3.0)
    assert ev2.run_id == 4 and ev2.exception == b"e"  # type: ignore[attr-defined]


def test_update_graph_carries_functions_and_options() -> None:
    msg = _wire(
        {
            "op": "update-graph",
            "tasks": [
                {
                    "key": "a",
                    "spec": b"s",
                    "deps": ["b"],
                    "order": 3,
                    "fn": "f1",
                    "workers": ["w"],
                    "allow_other_workers": True,
                    "retries": 2,
                }
            ],
            "keys": ["a"],
            "priority": 5,
            "functions": {"f1": b"blob"},
        }
    )
    ev = CLIENT_STREAM_OPS["update-graph"]("client-1", msg, 0.0)
    (spec,) = ev.tasks  # type: ignore[attr-defined]
    assert (spec.key, spec.dependencies, spec.order, spec.function) == ("a", ("b",), 3, "f1")
    assert spec.workers == ("w",) and spec.allow_other_workers and spec.retries == 2
    assert ev.functions == {"f1": b"blob"} and ev.user_priority == 5  # type: ignore[attr-defined]


def test_a_batch_names_its_keys_by_prefix_and_count() -> None:
    msg = _wire(
        {
            "op": "update-graph",
            "batches": [
                {"prefix": "inc-ab", "start": 5000, "count": 3, "function": "f", "chunk": "c"},
                {
                    "keys": ["x", ("y", 1)],
                    "function": "f",
                    "chunk": "d",
                    "deps": ["root"],
                    "row_deps": [[], ["z"]],
                    "order": 7,
                    "retries": 1,
                },
            ],
            "functions": {"f": b"func", "c": b"rows", "d": b"rows"},
        }
    )
    ev = CLIENT_STREAM_OPS["update-graph"]("client-1", msg, 0.0)
    first, second = ev.batches  # type: ignore[attr-defined]
    assert first.keys == ["inc-ab-5000", "inc-ab-5001", "inc-ab-5002"] and first.one_group
    assert (first.function, first.chunk, first.wanted) == ("f", "c", True)
    assert second.keys == ["x", ("y", 1)] and not second.one_group
    assert second.dependencies == ("root",) and second.row_dependencies == [(), ("z",)]
    assert (second.order, second.retries) == (7, 1)


@pytest.mark.parametrize(
    "batch",
    [
        {"prefix": "p", "start": 0, "count": 10**9, "function": "f", "chunk": "c"},
        {"prefix": "p", "start": 0, "count": -1, "function": "f", "chunk": "c"},
        {"keys": ["a", "b"], "row_deps": [["x"]], "function": "f", "chunk": "c"},
        {"keys": ["a"], "chunk": "c"},
        {"keys": [{"not": "hashable"}], "function": "f", "chunk": "c"},
        {"keys": ["a"], "deps": [{"x": 1}], "function": "f", "chunk": "c"},
        {"keys": ["a"], "row_deps": [[{"x": 1}]], "function": "f", "chunk": "c"},
    ],
)
def test_malformed_batches_are_refused(batch: dict[str, object]) -> None:
    msg = _wire({"op": "update-graph", "batches": [batch]})
    with pytest.raises((ValueError, KeyError, TypeError)):
        CLIENT_STREAM_OPS["update-graph"]("client-1", msg, 0.0)


def test_one_message_names_at_most_max_batch_keys_by_count() -> None:
    half = {"prefix": "p", "start": 0, "count": MAX_BATCH // 2, "function": "f", "chunk": "c"}
    ok = _wire({"op": "update-graph", "batches": [half, half]})
    assert (
        sum(len(b.keys) for b in CLIENT_STREAM_OPS["update-graph"]("c", ok, 0.0).batches)
        == MAX_BATCH
    )  # type: ignore[attr-defined]
    over = _wire({"op": "update-graph", "batches": [half, half, {**half, "count": 1}]})
    with pytest.raises(ValueError, match="at most"):
        CLIENT_STREAM_OPS["update-graph"]("c", over, 0.0)


def test_task_keys_must_be_hashable() -> None:
    msg = _wire({"op": "update-graph", "tasks": [{"key": {"a": 1}, "spec": b"s"}]})
    with pytest.raises(TypeError):
        CLIENT_STREAM_OPS["update-graph"]("c", msg, 0.0)


@pytest.mark.parametrize(
    ("keys", "one_group"),
    [
        (["inc-3f2a9c", "inc-0b1e", "inc-9"], True),
        (["my-func-3f2a9c", "my-func-77"], True),
        (["inc-3f2a9c", "inc-abcdef"], False),  # an all-letter token would join the name
        (["inc-3f-2a"], False),  # two words
        (["inc-3f2a", "dec-3f2a"], False),
        (["inc-3f2a", ("inc", 1)], False),
        (["inc-"], False),
    ],
)
def test_a_claimed_group_is_checked_key_by_key(keys: list[object], one_group: bool) -> None:
    prefix = "my-func" if str(keys[0]).startswith("my-func") else "inc"
    batch = {"keys": keys, "group": prefix, "function": "f", "chunk": "c"}
    ev = CLIENT_STREAM_OPS["update-graph"](
        "c", _wire({"op": "update-graph", "batches": [batch]}), 0.0
    )
    (got,) = ev.batches  # type: ignore[attr-defined]
    assert got.one_group is one_group
    if one_group:  # the check agrees with dask: every key splits to the same group
        assert len({key_split(k) for k in keys}) == 1


@pytest.mark.parametrize(
    "msg",
    [
        {"op": "free-keys", "keys": [{"a": "map"}]},
        {"op": "refresh-who-has", "who_has": {"x": "tcp://a"}},
        {"op": "acquire-replicas", "who_has": {"x": [1]}, "nbytes": {"x": 8}},
        {"op": "acquire-replicas", "who_has": {"x": ["tcp://a"]}, "nbytes": {"x": "8 bytes"}},
        {"op": "compute-task", "key": ["a", "list"], "run_spec": b"", "priority": [0]},
    ],
)
def test_malformed_scheduler_message_is_refused_before_the_worker_sees_it(
    msg: dict[str, object],
) -> None:
    with pytest.raises((TypeError, ValueError)):
        worker_event_from_msg(msg, now=1.0)


@pytest.mark.parametrize(
    "op, msg",
    [
        ("task-finished", {"key": "x", "nbytes": 8, "start": "soon", "stop": 1.0}),
        ("task-erred", {"key": {"a": "map"}}),
        ("add-keys", {"keys": {"x": None}}),
        ("missing-data", {"key": ["a"], "errant_worker": "tcp://a"}),
        ("long-running", {"key": {"a": "map"}}),
    ],
)
def test_malformed_worker_message_is_refused_before_the_scheduler_sees_it(
    op: str, msg: dict[str, object]
) -> None:
    with pytest.raises((TypeError, ValueError)):
        WORKER_STREAM_OPS[op]("tcp://w", msg, 1.0)


@pytest.mark.parametrize(
    "op, msg",
    [
        ("client-desires-keys", {"keys": ["x", {"a": "map"}]}),
        ("client-releases-keys", {"keys": [["a", "list"]]}),
        ("cancel-keys", {"keys": [{"a": "map"}]}),
        ("update-data", {"who_has": {"x": [3]}, "nbytes": {"x": 8}}),
        ("update-data", {"who_has": {"x": ["tcp://a"]}, "nbytes": {"x": [8]}}),
    ],
)
def test_malformed_client_message_is_refused_before_the_scheduler_sees_it(
    op: str, msg: dict[str, object]
) -> None:
    with pytest.raises((TypeError, ValueError)):
        CLIENT_STREAM_OPS[op]("client-1", msg, 1.0)
