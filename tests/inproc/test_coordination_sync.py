"""Tier 2: coordination primitives from synchronous clients, from threads and from tasks,
against an in-process LocalCluster over tcp."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conveyor import Client, Event, LocalCluster, Lock, Queue, Semaphore, Variable


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=False) as c:
        yield c


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as c:
        yield c


@pytest.fixture
def client2(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.scheduler_address, set_as_default=False) as c:
        yield c


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll a condition nothing announces (bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def bump(path: Path) -> None:
    """Read, pause, write: two of these at once lose an increment."""
    value = int(path.read_text())
    time.sleep(0.001)  # widens the window a second writer would need; not a synchronisation
    path.write_text(str(value + 1))


def test_threads_of_two_clients_never_hold_the_lock_together(
    client: Client, client2: Client, tmp_path: Path
) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    inside, peak = 0, 0
    guard = threading.Lock()

    def work(c: Client) -> None:
        nonlocal inside, peak
        lock = Lock("counter-lock", client=c)
        for _ in range(10):
            with lock:
                with guard:
                    inside += 1
                    peak = max(peak, inside)
                bump(counter)
                with guard:
                    inside -= 1

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, [client, client2, client, client2]))
    assert int(counter.read_text()) == 40
    assert peak == 1


def locked_bump(path: str, lock: Lock, times: int) -> int:
    for _ in range(times):
        with lock:
            bump(Path(path))
    return times


def test_tasks_increment_a_file_under_a_lock(client: Client, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    lock = Lock("task-lock")  # pickled into the tasks by name
    futures = client.map(locked_bump, [str(counter)] * 4, [lock] * 4, [5] * 4, pure=False)
    assert client.gather(futures) == [5] * 4
    assert int(counter.read_text()) == 20
    assert not lock.locked()


def test_semaphore_bound_holds_for_threads(client: Client, client2: Client) -> None:
    inside, peak = 0, 0
    guard = threading.Lock()
    both_in = threading.Barrier(2, timeout=10)

    def work(c: Client) -> None:
        nonlocal inside, peak
        with Semaphore(2, "pool", client=c):
            with guard:
                inside += 1
                peak = max(peak, inside)
            both_in.wait()  # two holders at once are allowed, and are reached
            with guard:
                inside -= 1

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(work, [client, client2] * 3))
    assert peak == 2
    assert Semaphore(2, "pool", client=client).get_value() == 0


def test_lock_passes_on_when_its_holder_closes(cluster: LocalCluster, client: Client) -> None:
    holder = Client(cluster.scheduler_address, set_as_default=False)
    assert Lock("handover", client=holder).acquire()
    assert Lock("handover", client=client).acquire(timeout=0.05) is False
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(Lock("handover").acquire(timeout=10)))
    waiter.start()
    wait_until(lambda: _waiters(cluster, "handover"))  # it waits on the scheduler
    holder.close()
    waiter.join()
    assert got == [True]
    assert Lock("handover").locked()


def test_event_and_variable_between_threads(client: Client, client2: Client) -> None:
    ready = Event("ready", client=client2)
    results: list[object] = []

    def consumer() -> None:
        if ready.wait(timeout=10):
            results.append(Variable("box", client=client2).get(timeout=10))

    t = threading.Thread(target=consumer)
    t.start()
    fut = client.submit(sum, [1, 2, 3])
    Variable("box").set(fut)
    Event("ready").set()
    t.join()
    (got,) = results
    assert got.key == fut.key and got.result() == 6  # type: ignore[attr-defined]
    Variable("box").delete()
    with pytest.raises(TimeoutError):
        Variable("box").get(timeout=0.05)
    Event("ready").clear()
    assert not ready.is_set()


def test_queue_between_clients(client: Client, client2: Client) -> None:
    q = Queue("sync-q", client=client2)
    for i in range(5):
        Queue("sync-q").put(i)
    assert q.qsize() == 5
    assert [q.get() for _ in range(3)] == [0, 1, 2]
    assert q.get(batch=2) == [3, 4]
    with pytest.raises(TimeoutError):
        q.get(timeout=0.05)


def test_async_context_manager_refused_for_a_sync_client(client: Client) -> None:
    lock = Lock("mode", client=client)
    with pytest.raises(TypeError, match="'with lock'"):
        lock.__aenter__().send(None)


def _waiters(cluster: LocalCluster, name: str) -> int:
    assert cluster.scheduler is not None
    sem: Any = cluster.scheduler.extensions["coordination"].semaphores.get(name)
    return 0 if sem is None else len(sem.waiters)
