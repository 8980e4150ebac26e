"""Coordination primitives used by tasks on worker processes: each task's holder is its
worker's client, and a worker process that dies gives its leases back."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

from conveyor import Client, LocalCluster, Lock, Queue, get_worker
from conveyor.deploy.local import WorkerProcess

pytestmark = pytest.mark.e2e

# worker processes cannot import this test module: its functions travel by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True) as c:
        yield c


def locked_bump(path: str, times: int, lock: Lock) -> int:
    for _ in range(times):
        with lock:
            p = Path(path)
            value = int(p.read_text())
            time.sleep(0.001)  # widens the window a second writer would need
            p.write_text(str(value + 1))
    return times


def produce(n: int, queue: Queue) -> int:
    client = queue.client  # the worker's client, inside a task
    for i in range(n):
        queue.put(client.submit(pow, i, 2, pure=False))
    return n


def hold(lock: Lock) -> str:
    assert lock.acquire(timeout=10)
    return str(get_worker().name)  # returns holding it: the worker's client keeps it


def test_processes_share_a_lock_and_a_queue(cluster: LocalCluster, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    with Client(cluster) as client:
        futures = client.map(
            locked_bump, [str(counter)] * 4, [10] * 4, lock=Lock("file"), pure=False
        )
        assert client.gather(futures) == [10] * 4
        assert int(counter.read_text()) == 40

        q = Queue("squares")
        assert client.submit(produce, 5, q).result() == 5  # its futures are gone now
        got = [q.get(timeout=10) for _ in range(5)]
        assert client.gather(got) == [i * i for i in range(5)]


def test_a_dead_worker_process_gives_its_lease_back(cluster: LocalCluster) -> None:
    with Client(cluster) as client:
        name = client.submit(hold, Lock("held"), pure=False).result()
        mine = Lock("held")
        assert mine.acquire(timeout=0.1) is False
        proc = cluster.workers[int(name)]
        assert isinstance(proc, WorkerProcess)
        proc.signal(signal.SIGKILL)
        assert mine.acquire(timeout=30) is True
        assert mine.release() is True
