"""A peer that answers a fetch "busy" (it serves ``worker.connections.incoming``
transfers already): the keys are fetched from another holder, or from it after a wait
that doubles while it stays busy; never reported lost, never failed.

The state machine is driven with events here, as in ``test_worker_state``; then the
seeded simulator runs whole graphs with workers that serve one transfer at a time.
"""

from __future__ import annotations

import random

import pytest
from test_worker_state import P1, P2, compute, gathered, make, states

from conveyor.core import worker_events as we
from conveyor.core.worker import BUSY_RETRY_FIRST, BUSY_RETRY_MAX, WorkerState
from conveyor.testing.simulation import SimCluster, expected_values, random_dag


def busy(ws: WorkerState, peer: str) -> list[we.WorkerInstruction]:
    return ws.handle(we.GatherDepDone(3.0, peer, {}, busy=True))


def retry(ws: WorkerState, peer: str) -> list[we.WorkerInstruction]:
    return ws.handle(we.RetryBusyWorkerEvent(4.0, peer))


def test_busy_peer_is_asked_again_after_a_doubling_wait() -> None:
    ws = make()
    assert compute(ws, "x", who_has={"a": [P1]}, nbytes={"a": 10}) == [we.GatherDep(P1, ["a"], 10)]
    delays = []
    for _ in range(8):
        out = busy(ws, P1)
        assert len(out) == 1 and isinstance(out[0], we.RetryBusyWorkerLater), out
        assert out[0].worker == P1
        delays.append(out[0].delay)
        # nothing is lost: the key waits, the scheduler hears nothing
        assert states(ws) == {"x": "waiting", "a": "fetch"}
        assert P1 in ws.busy_workers and P1 not in ws.fetchable_peers
        assert retry(ws, P1) == [we.GatherDep(P1, ["a"], 10)]
    assert delays[0] == BUSY_RETRY_FIRST
    assert delays[:3] == [BUSY_RETRY_FIRST, 2 * BUSY_RETRY_FIRST, 4 * BUSY_RETRY_FIRST]
    assert delays[-1] == BUSY_RETRY_MAX
    # a real answer ends the streak: the next busy answer waits the shortest time again
    assert gathered(ws, P1, {"a": 10}) == [we.AddKeysMsg({"a": 10}), we.Execute("x")]
    assert P1 not in ws.busy_streak
    compute(ws, "y", who_has={"b": [P1]}, nbytes={"b": 10})
    assert busy(ws, P1) == [we.RetryBusyWorkerLater(P1, BUSY_RETRY_FIRST)]


def test_busy_peer_key_is_fetched_from_another_holder_meanwhile() -> None:
    ws = make(transfer_message_bytes_limit=10)
    out = compute(ws, "x", who_has={"a": [P1], "b": [P1, P2]}, nbytes={"a": 10, "b": 10})
    # one key per transfer: a from P1; b from P2 (P1 has a transfer in flight)
    assert out == [we.GatherDep(P1, ["a"], 10), we.GatherDep(P2, ["b"], 10)]
    assert gathered(ws, P2, {"b": 10}) == [we.AddKeysMsg({"b": 10})]
    ws2 = make(transfer_message_bytes_limit=100)
    out = compute(ws2, "x", who_has={"a": [P1, P2]}, nbytes={"a": 10})
    first = out[0]
    assert isinstance(first, we.GatherDep)
    other = P2 if first.worker == P1 else P1
    out = busy(ws2, first.worker)
    # the other holder is asked at once; the busy one keeps its place among holders
    assert out == [
        we.RetryBusyWorkerLater(first.worker, BUSY_RETRY_FIRST),
        we.GatherDep(other, ["a"], 10),
    ]
    assert ws2.tasks["a"].who_has == {P1, P2}
    assert retry(ws2, first.worker) == []  # a is in flight from the other: nothing to ask
    assert gathered(ws2, other, {"a": 10}) == [we.AddKeysMsg({"a": 10}), we.Execute("x")]


def test_key_freed_while_its_fetch_was_refused_is_released() -> None:
    ws = make()
    compute(ws, "x", who_has={"a": [P1]}, nbytes={"a": 10})
    ws.handle(we.FreeKeysEvent(0.5, ["x"]))
    assert states(ws) == {"a": "cancelled"}
    assert busy(ws, P1) == [we.RetryBusyWorkerLater(P1, BUSY_RETRY_FIRST)]
    assert states(ws) == {}
    assert retry(ws, P1) == []
    assert not ws.busy_workers and not ws.fetchable_peers
    assert ws.busy_streak == {}  # nothing more wanted from P1: its streak is forgotten


def test_key_to_compute_here_is_computed_when_its_fetch_was_refused() -> None:
    ws = make()
    compute(ws, "x", who_has={"a": [P1]}, nbytes={"a": 10})
    # the scheduler moved a here while it travelled
    ws.handle(we.ComputeTaskEvent(0.5, "a", b"spec:a", (0, 0, 0), {}, {}))
    assert busy(ws, P1) == [we.RetryBusyWorkerLater(P1, BUSY_RETRY_FIRST), we.Execute("a")]
    assert states(ws) == {"x": "waiting", "a": "executing"}


def test_failed_peer_forgets_its_busy_streak() -> None:
    ws = make()
    compute(ws, "x", who_has={"a": [P1]}, nbytes={"a": 10})
    busy(ws, P1)
    assert retry(ws, P1) == [we.GatherDep(P1, ["a"], 10)]
    assert gathered(ws, P1, {}, failed=True) == [we.MissingDataMsg("a", P1)]
    assert ws.busy_streak == {} and ws.busy_workers == set()


@pytest.mark.parametrize("seed", range(8))
def test_graphs_stay_exact_when_workers_serve_one_transfer_at_a_time(seed: int) -> None:
    rng = random.Random(seed)
    tasks = random_dag(rng, 200, max_deps=6)
    sim = SimCluster(n_workers=5, nthreads=2, seed=seed, serve_limit=1)
    sim.submit("c1", tasks, list(tasks))
    sim.run_until_quiet()
    sim.check_quiet()
    assert sim.busy_answers > 0  # the bound was hit: the test exercised busy answers
    expected = expected_values(tasks)
    for key, value in expected.items():
        assert sim.result(key) == value
    assert all(n == 0 for n in sim.serving.values())
    # busy answers are not failures: no task was recomputed for want of its data
    assert all(n == 1 for n in sim.executions.values())
    for ws in sim.workers.values():
        assert not ws.busy_workers and not ws.fetchable_peers and not ws.busy_streak


@pytest.mark.parametrize("seed", range(6))
def test_a_busy_peer_that_dies_is_no_different_from_any_lost_peer(seed: int) -> None:
    rng = random.Random(50 + seed)
    tasks = random_dag(rng, 150, max_deps=6)
    sim = SimCluster(n_workers=4, nthreads=2, seed=seed, serve_limit=1, nannies=bool(seed % 2))
    sim.submit("c1", tasks, list(tasks))
    sim.kill_at(rng.randrange(20, 300), "sim://worker-1")
    sim.run_until_quiet()
    sim.check_quiet()
    assert sim.busy_answers > 0
    expected = expected_values(tasks)
    for key, value in expected.items():
        assert sim.result(key) == value
    for ws in sim.workers.values():
        assert not ws.busy_workers and not ws.fetchable_peers and not ws.busy_streak
