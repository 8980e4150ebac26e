"""Worker liveness in the scheduler's state machine: heartbeats, and ``worker_ttl``
dropping a worker that went silent (its tasks go elsewhere, and it is told to close
should it wake up)."""

from __future__ import annotations

from conveyor.core import events as ev
from conveyor.core.instructions import CloseWorker, ComputeTask
from conveyor.core.scheduler import SchedulerState

W1 = "tcp://10.0.0.1:1000"
W2 = "tcp://10.0.0.2:1000"
C = "client-1"


def cluster(worker_ttl: float | None = None) -> SchedulerState:
    s = SchedulerState(validate=True, worker_ttl=worker_ttl)
    for address in (W1, W2):
        s.handle(ev.AddWorker(0.0, address, address, 1, 2**30, "host", {}))
    s.handle(ev.AddClient(0.0, C))
    return s


def test_worker_ttl_drops_a_silent_worker_and_tells_it_to_close() -> None:
    s = cluster(worker_ttl=10.0)
    s.handle(ev.UpdateGraph(1.0, C, [ev.TaskSpec("x", b"x", ())], ["x"]))
    on = s.tasks["x"].processing_on
    assert on is not None
    silent, alive = on.address, W2 if on.address == W1 else W1
    s.handle(ev.WorkerHeartbeat(8.0, alive, {"cpu": 5.0}))
    assert s.handle(ev.Tick(9.0)) == []
    assert set(s.workers) == {W1, W2}
    out = s.handle(ev.Tick(10.5))
    reason = "removed: no heartbeat for 10.5s (worker-ttl 10.0s)"
    assert out[-1] == CloseWorker(silent, reason)  # should it wake up, it must not go on
    assert [(type(i), i.worker) for i in out[:-1]] == [(ComputeTask, alive)]  # x moved
    assert set(s.workers) == {alive}
    assert s.workers[alive].metrics == {"cpu": 5.0}
    # a late message from the dropped worker changes nothing
    s.handle(ev.TaskFinished(11.0, silent, "x", 8))
    assert s.tasks["x"].state == "processing"
    assert s.tasks["x"].processing_on is s.workers[alive]


def test_without_worker_ttl_tick_drops_nobody() -> None:
    s = cluster()
    assert s.handle(ev.Tick(1e9)) == []
    assert set(s.workers) == {W1, W2}
