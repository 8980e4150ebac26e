"""An event whose handler raises: the instructions it produced before failing are
dropped, never sent along with the next event's, and the exception reaches the shell."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from conveyor.core import events as ev
from conveyor.core import worker as worker_module
from conveyor.core import worker_events as we
from conveyor.core.instructions import ComputeTask
from conveyor.core.scheduler import SchedulerState
from conveyor.core.worker import WorkerState

W = "tcp://10.0.0.1:1000"
C = "client-1"


def _then_fail(handler: Callable[..., None]) -> Callable[..., None]:
    """``handler``, failing once it has done its work (and produced its output)."""

    def broken(*args: Any) -> None:
        handler(*args)
        raise RuntimeError("injected")

    return broken


def test_scheduler_drops_the_output_of_an_event_that_raised() -> None:
    s = SchedulerState(validate=True)
    s.handle(ev.AddWorker(0.0, W, W, 1, 2**30, "host", {}))
    s.handle(ev.AddClient(0.0, C))
    good = s._handlers[ev.UpdateGraph]
    s._handlers[ev.UpdateGraph] = _then_fail(good)
    graph = ev.UpdateGraph(1.0, C, [ev.TaskSpec("x", b"spec", ())], ["x"])
    with pytest.raises(RuntimeError, match="injected"):
        s.handle(graph)
    assert s.tasks["x"].state == "processing"  # not rolled back: the shell drops the peer
    s._handlers[ev.UpdateGraph] = good
    # the ComputeTask of the failed event does not ride along with the next event's output
    assert s.handle(ev.WorkerHeartbeat(2.0, W, {})) == []
    out = s.handle(ev.UpdateGraph(3.0, C, [ev.TaskSpec("y", b"spec", ())], ["y"]))
    assert [(type(i), i.key) for i in out if isinstance(i, ComputeTask)] == [(ComputeTask, "y")]


def test_worker_drops_the_output_of_an_event_that_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    ws = WorkerState(W, 1, validate=True)
    assert ws.handle(we.ComputeTaskEvent(0.0, "x", b"spec", (0,), {}, {})) == [we.Execute("x")]
    ws.handle(we.ExecuteSuccess(2.0, "x", 8, "int", 1.0, 2.0))
    good = worker_module._HANDLERS[we.ComputeTaskEvent]
    monkeypatch.setitem(worker_module._HANDLERS, we.ComputeTaskEvent, _then_fail(good))
    with pytest.raises(RuntimeError, match="injected"):
        # asked again for a key it holds, it answers at once, then fails
        ws.handle(we.ComputeTaskEvent(3.0, "x", b"spec", (0,), {}, {}, run_id=2))
    monkeypatch.setitem(worker_module._HANDLERS, we.ComputeTaskEvent, good)
    # the answer of the failed event does not ride along with this one's output
    assert ws.handle(we.ComputeTaskEvent(4.0, "y", b"spec", (1,), {}, {})) == [we.Execute("y")]
    assert ws.tasks["x"].state == "memory"
