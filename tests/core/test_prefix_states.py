"""Per-prefix state counts and the task stream: the dashboard's snapshots, kept by the
scheduler's state machine as it works (checked against the tasks after every event by
``validate=True``, and here against expected figures)."""

from __future__ import annotations

from conveyor.core import events as ev
from conveyor.core.instructions import ComputeTask, Instruction
from conveyor.core.scheduler import SchedulerState

W1 = "tcp://10.0.0.1:1000"
W2 = "tcp://10.0.0.2:1000"
C = "client-1"


def computes(out: list[Instruction]) -> list[ComputeTask]:
    return [i for i in out if isinstance(i, ComputeTask)]


def live(s: SchedulerState, prefix: str) -> dict[str, int]:
    states = s.task_prefixes[prefix].states
    return {k: v for k, v in states.items() if v and k != "forgotten"}


def test_counts_follow_every_transition_and_forgetting() -> None:
    s = SchedulerState(validate=True)
    s.handle(ev.AddWorker(0.0, W1, W1, 1, 2**30, "host"))
    s.handle(ev.AddClient(0.0, C))
    specs = [ev.TaskSpec(f"inc-{i}", b"run", order=i) for i in range(4)]
    specs += [ev.TaskSpec(f"sum-{i}", b"run", (f"inc-{i}",), order=10 + i) for i in range(4)]
    out = computes(s.handle(ev.UpdateGraph(0.0, C, specs, [sp.key for sp in specs])))
    assert len(out) == 2  # one thread: two placed (saturation 1.1), two queued
    assert live(s, "inc") == {"processing": 2, "queued": 2}
    assert live(s, "sum") == {"waiting": 4}

    first = out[0]
    s.handle(ev.TaskFinished(1.0, W1, first.key, 8, start=0.5, stop=0.9, run_id=first.run_id))
    assert live(s, "inc") == {"processing": 2, "queued": 1, "memory": 1}
    assert s.task_stream_count == 1
    assert list(s.task_stream) == [("inc", first.key, W1, 0.5, 0.9, False)]

    second = next(
        ts for ts in s.tasks.values() if ts.state == "processing" and ts.prefix.name == "inc"
    )
    key, run_id = second.key, second.run_id
    s.handle(ev.TaskErred(2.0, W1, key, b"exc", b"tb", run_id=run_id, start=1.0, stop=1.5))
    counts = live(s, "inc")
    assert counts["erred"] == 1 and sum(counts.values()) == 4
    assert s.task_stream_count == 2  # a failed run is in the stream, marked
    assert s.task_stream[-1] == ("inc", key, W1, 1.0, 1.5, True)

    # the client lets go of everything: every task is forgotten, the counts say so
    s.handle(ev.ClientReleasesKeys(3.0, C, [sp.key for sp in specs]))
    assert not s.tasks
    assert live(s, "inc") == {} and live(s, "sum") == {}
    assert s.task_prefixes["inc"].states["forgotten"] == 4
    assert s.task_prefixes["sum"].states["forgotten"] == 4


def test_counts_of_bulk_submissions() -> None:
    s = SchedulerState(validate=True)
    s.handle(ev.AddWorker(0.0, W1, W1, 2, 2**30, "host"))
    s.handle(ev.AddClient(0.0, C))
    base = ev.TaskSpec("base", b"run")
    batch = ev.TaskBatch([f"row-{i}" for i in range(50)], "f", "c", dependencies=("base",))
    s.handle(ev.UpdateGraph(0.0, C, [base], ["base"], 0, {"f": b"fn", "c": b"rows"}, [batch]))
    assert live(s, "row") == {"waiting": 50}  # the bulk released -> waiting path
    assert live(s, "base") == {"processing": 1}
    (c,) = [ts for ts in s.tasks.values() if ts.state == "processing"]
    out = s.handle(ev.TaskFinished(1.0, W1, "base", 8, start=0.1, stop=0.2, run_id=c.run_id))
    counts = live(s, "row")
    assert counts["processing"] == len(computes(out)) and sum(counts.values()) == 50


def test_the_task_stream_is_bounded_and_counts_every_run() -> None:
    s = SchedulerState(validate=False)
    s.handle(ev.AddWorker(0.0, W1, W1, 1, 2**30, "host"))
    s.handle(ev.AddClient(0.0, C))
    n = s.TASK_STREAM_SIZE + 5
    specs = [ev.TaskSpec(f"t-{i}", b"run", order=i) for i in range(n)]
    pending = computes(s.handle(ev.UpdateGraph(0.0, C, specs, [sp.key for sp in specs])))
    while pending:
        c = pending.pop()
        out = s.handle(ev.TaskFinished(1.0, W1, c.key, 8, start=1.0, stop=2.0, run_id=c.run_id))
        pending += computes(out)
    assert s.task_stream_count == n
    assert len(s.task_stream) == s.TASK_STREAM_SIZE
    assert live(s, "t") == {"memory": n}
