"""Resources and per-task priorities on the wire (through msgpack)."""

from __future__ import annotations

import pytest

from conveyor.core import instructions as si
from conveyor.core import worker_events as we
from conveyor.protocol import decode, encode
from conveyor.protocol.messages import (
    CLIENT_STREAM_OPS,
    resource_amounts,
    scheduler_instruction_to_msg,
    worker_event_from_msg,
)


def _wire(msg: dict[str, object]) -> dict[str, object]:
    out = decode(encode(msg))
    assert isinstance(out, dict)
    return out


def test_compute_task_carries_the_resources_it_holds() -> None:
    instr = si.ComputeTask("tcp://w", "x", b"s", (0, 1, 2), {}, {}, 0.5, resources={"GPU": 1.0})
    msg = _wire(scheduler_instruction_to_msg(instr))
    event = worker_event_from_msg(msg, now=1.0)
    assert isinstance(event, we.ComputeTaskEvent) and event.resources == {"GPU": 1.0}
    plain = si.ComputeTask("tcp://w", "y", b"s", (0, 1, 3), {}, {}, 0.5)
    assert "resources" not in scheduler_instruction_to_msg(plain)


def test_update_graph_carries_resources_and_task_priorities() -> None:
    msg = _wire(
        {
            "op": "update-graph",
            "tasks": [
                {"key": "a", "spec": b"s", "resources": {"GPU": 1}, "priority": 7},
                {"key": "b", "spec": b"s", "resources": {"GPU": 1.0}},
                {"key": "c", "spec": b"s", "resources": {"GPU": 0}},
            ],
            "batches": [{"keys": ["m"], "function": "f", "chunk": "k", "resources": {"X": 2}}],
            "keys": ["a"],
            "priority": 1.5,
        }
    )
    ev = CLIENT_STREAM_OPS["update-graph"]("client-1", msg, 0.0)
    a, b, c = ev.tasks  # type: ignore[attr-defined]
    assert a.resources == {"GPU": 1.0} and a.priority == 7
    assert b.resources is a.resources  # tasks needing the same share one dict
    assert b.priority is None and c.resources is None
    assert ev.user_priority == 1.5  # type: ignore[attr-defined]
    (batch,) = ev.batches  # type: ignore[attr-defined]
    assert batch.resources == {"X": 2.0}


@pytest.mark.parametrize(
    "value", [["GPU"], {"GPU": -1}, {"GPU": "one"}, {"": 1}, {"GPU": float("inf")}, {1: 1}]
)
def test_malformed_resources_are_refused(value: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        resource_amounts(value)


def test_malformed_priority_is_refused() -> None:
    msg = {"op": "update-graph", "tasks": [{"key": "a", "spec": b"s", "priority": "high"}]}
    with pytest.raises(ValueError, match="priority must be a number"):
        CLIENT_STREAM_OPS["update-graph"]("client-1", msg, 0.0)
