"""Which tasks a worker's death counts against (core/deaths.py), driven with events.

Each worker here has one thread and is sent three tasks: one runs, two wait there. Only
the running one may have killed it.
"""

from __future__ import annotations

import pytest

from conveyor.core import events as ev
from conveyor.core.deaths import UNSERVED_LIMIT, UNSERVED_WINDOW, VERDICT_WAIT
from conveyor.core.instructions import CloseWorker, FreeKeys, Instruction, KeyErred
from conveyor.core.scheduler import SchedulerState

W1, W2 = "tcp://10.0.0.1:1000", "tcp://10.0.0.2:1000"
C = "client-1"
KEYS = ["a", "b", "c", "d", "e", "f"]


def cluster(nanny: bool = True, allowed_failures: int = 3) -> SchedulerState:
    """Two one-thread workers, six tasks: W1 has a, c, e and W2 has b, d, f."""
    s = SchedulerState(validate=True, allowed_failures=allowed_failures)
    for w in (W1, W2):
        s.handle(ev.AddWorker(0.0, w, w, 1, 2**30, "host", {}, {}, nanny))
    tasks = [ev.TaskSpec(k, b"opaque", ()) for k in KEYS]
    for order, t in enumerate(tasks):
        t.order = order
    s.handle(ev.UpdateGraph(0.0, C, tasks, KEYS))
    assert sorted(t.key for t in s.workers[W1].processing) == ["a", "c", "e"]
    return s


def marks(s: SchedulerState) -> dict[str, int]:
    return {k: ts.suspicious for k, ts in s.tasks.items() if ts.suspicious}


def erred(out: list[Instruction]) -> dict[object, str]:
    return {i.key: i.exception_text for i in out if isinstance(i, KeyErred)}


def test_connection_first_then_report_marks_only_the_running_task() -> None:
    s = cluster()
    s.handle(ev.RemoveWorker(1.0, W1, "connection closed"))
    assert marks(s) == {}  # rescheduled at once, no verdict yet
    assert {t.key for t in s.workers[W2].processing} == set(KEYS)
    assert list(s.awaiting_verdict) == [W1]
    s.handle(ev.WorkerDied(1.1, W1, "killed by SIGKILL", ["c"]))
    assert marks(s) == {"c": 1}
    assert s.awaiting_verdict == {}


def test_report_first_removes_the_worker_with_its_verdict() -> None:
    s = cluster()
    s.handle(ev.WorkerDied(1.0, W1, "exit code 1", ["a"]))
    assert W1 not in s.workers
    assert marks(s) == {"a": 1}
    assert s.awaiting_verdict == {}
    # the connection closing afterwards changes nothing
    assert s.handle(ev.RemoveWorker(1.1, W1, "connection closed")) == []
    assert marks(s) == {"a": 1}


def test_a_report_after_the_verdict_changes_nothing() -> None:
    s = cluster()
    s.handle(ev.RemoveWorker(1.0, W1, "connection closed"))
    s.handle(ev.WorkerDied(1.1, W1, "killed by SIGKILL", ["a"]))
    s.handle(ev.WorkerDied(1.2, W1, "killed by SIGKILL", ["a"]))
    assert marks(s) == {"a": 1}


def test_without_a_report_in_time_every_task_it_had_is_marked() -> None:
    s = cluster()
    s.handle(ev.RemoveWorker(1.0, W1, "connection closed"))
    s.handle(ev.Tick(1.0 + VERDICT_WAIT / 2))
    assert marks(s) == {}
    s.handle(ev.Tick(1.0 + VERDICT_WAIT))
    assert marks(s) == {"a": 1, "c": 1, "e": 1}
    assert s.awaiting_verdict == {}


def test_an_unknown_record_marks_every_task_it_had() -> None:
    s = cluster()
    s.handle(ev.RemoveWorker(1.0, W1, "connection closed"))
    s.handle(ev.WorkerDied(1.1, W1, "killed by SIGSEGV", None))
    assert marks(s) == {"a": 1, "c": 1, "e": 1}


@pytest.mark.parametrize("first", ["report", "connection"])
def test_a_worker_that_did_not_die_marks_nothing(first: str) -> None:
    s = cluster()
    report = ev.WorkerDied(1.0, W1, "exit code 3", ["a"], died=False)
    closed = ev.RemoveWorker(1.0, W1, "connection closed")
    for event in (report, closed) if first == "report" else (closed, report):
        s.handle(event)
    assert W1 not in s.workers
    assert marks(s) == {}
    assert s.awaiting_verdict == {}


def test_a_worker_closing_on_purpose_marks_nothing() -> None:
    s = cluster()
    s.handle(ev.RemoveWorker(1.0, W1, "worker-close", expected=True))
    assert marks(s) == {}
    assert s.awaiting_verdict == {}
    s.handle(ev.Tick(10 * VERDICT_WAIT))
    assert marks(s) == {}


def test_without_a_nanny_every_task_it_had_is_marked_at_once() -> None:
    s = cluster(nanny=False)
    s.handle(ev.RemoveWorker(1.0, W1, "connection closed"))
    assert marks(s) == {"a": 1, "c": 1, "e": 1}
    assert s.awaiting_verdict == {}


def test_a_silent_worker_marks_every_task_it_had_at_once() -> None:
    s = cluster()
    s.worker_ttl = 5.0
    s.handle(ev.WorkerHeartbeat(4.0, W2))
    s.handle(ev.Tick(6.0))  # W1 silent for 6 s, W2 for 2 s
    assert W1 not in s.workers and W2 in s.workers
    assert marks(s) == {"a": 1, "c": 1, "e": 1}


def test_a_late_verdict_fails_a_task_running_elsewhere_and_frees_it_there() -> None:
    s = cluster(allowed_failures=0)
    s.handle(ev.RemoveWorker(1.0, W1, "connection closed"))
    assert s.tasks["c"].processing_on is s.workers[W2]
    out = s.handle(ev.WorkerDied(1.1, W1, "memory limit: 950 MiB resident", ["c"]))
    text = erred(out)["c"]
    assert text.startswith("KilledWorker: attempted to run task 'c' on 1 different workers")
    assert W1 in text and "memory limit: 950 MiB resident" in text
    assert FreeKeys(W2, ["c"]) in out
    assert s.tasks["c"].state == "erred"
    assert {k for k, ts in s.tasks.items() if ts.state == "processing"} == {
        "a",
        "b",
        "d",
        "e",
        "f",
    }


def test_a_late_verdict_fails_a_queued_task_and_its_dependents() -> None:
    s = SchedulerState(validate=True, allowed_failures=0)
    s.handle(ev.AddWorker(0.0, W1, W1, 1, 2**30, "host", {}, {}, True))
    tasks = [ev.TaskSpec("x", b"opaque", ()), ev.TaskSpec("y", b"opaque", ("x",))]
    for order, t in enumerate(tasks):
        t.order = order
    s.handle(ev.UpdateGraph(0.0, C, tasks, ["y"]))
    s.handle(ev.RemoveWorker(1.0, W1, "connection closed"))
    assert s.tasks["x"].state == "queued"  # no worker left to run it
    out = s.handle(ev.WorkerDied(1.1, W1, "killed by SIGKILL", ["x"]))
    assert "KilledWorker" in erred(out)["y"]
    assert {k: ts.state for k, ts in s.tasks.items()} == {"x": "erred", "y": "erred"}


def test_a_late_verdict_spares_a_task_computed_elsewhere_meanwhile() -> None:
    s = cluster(allowed_failures=0)
    s.handle(ev.RemoveWorker(1.0, W1, "connection closed"))
    s.handle(ev.TaskFinished(1.05, W2, "a", 8, "int", 1.0, 1.05))
    out = s.handle(ev.WorkerDied(1.1, W1, "killed by SIGKILL", ["a"]))
    assert erred(out) == {}
    assert s.tasks["a"].state == "memory"


def test_a_poison_task_fails_after_allowed_failures_deaths_its_siblings_do_not() -> None:
    s = cluster(allowed_failures=1)
    s.handle(ev.WorkerDied(1.0, W1, "killed by SIGKILL", ["a"]))
    # a restarted worker takes W1's place; a goes there again and kills it again
    s.handle(ev.AddWorker(2.0, W1, W1, 1, 2**30, "host", {}, {}, True))
    where = s.tasks["a"].processing_on
    assert where is not None
    out = s.handle(ev.WorkerDied(3.0, where.address, "killed by SIGKILL", ["a"]))
    text = erred(out)["a"]
    assert "on 2 different workers" in text and "killed by SIGKILL" in text
    assert marks(s) == {"a": 2}
    assert all(s.tasks[k].state in ("processing", "queued", "waiting") for k in "bcdef")


def test_a_worker_whose_peers_keep_failing_to_fetch_from_it_is_removed() -> None:
    s = SchedulerState(validate=True)
    for w in (W1, W2):
        s.handle(ev.AddWorker(0.0, w, w, 1, 2**30, "host"))
    keys = [f"x-{i}" for i in range(UNSERVED_LIMIT)]
    s.handle(ev.UpdateData(0.0, C, {k: [W1] for k in keys}, {k: 8 for k in keys}))
    for i, key in enumerate(keys[:-1]):
        out = s.handle(ev.MissingData(1.0 + i, W2, key, W1))
        assert FreeKeys(W1, [key]) in out and W1 in s.workers
    out = s.handle(ev.MissingData(10.0, W2, keys[-1], W1))
    assert W1 not in s.workers
    assert (
        CloseWorker(W1, f"removed: its peers failed to fetch data from it {UNSERVED_LIMIT} times")
        in out
    )


def test_failed_fetches_far_apart_do_not_remove_a_worker() -> None:
    s = SchedulerState(validate=True)
    for w in (W1, W2):
        s.handle(ev.AddWorker(0.0, w, w, 1, 2**30, "host"))
    keys = [f"x-{i}" for i in range(UNSERVED_LIMIT)]
    s.handle(ev.UpdateData(0.0, C, {k: [W1] for k in keys}, {k: 8 for k in keys}))
    for i, key in enumerate(keys):
        s.handle(ev.MissingData(1.0 + i * (UNSERVED_WINDOW + 1), W2, key, W1))
    assert W1 in s.workers


def test_one_failed_fetch_of_many_keys_counts_once() -> None:
    s = SchedulerState(validate=True)
    for w in (W1, W2):
        s.handle(ev.AddWorker(0.0, w, w, 1, 2**30, "host"))
    keys = [f"x-{i}" for i in range(10)]
    s.handle(ev.UpdateData(0.0, C, {k: [W1] for k in keys}, {k: 8 for k in keys}))
    for key in keys:  # one fetch's keys, reported together
        s.handle(ev.MissingData(1.0, W2, key, W1))
    assert W1 in s.workers
    assert s.workers[W1].unserved == (1, 1.0)
