"""Code inside tasks on worker processes: get_worker, get_client, worker_client,
secede/rejoin, futures passed into tasks, and fire_and_forget."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

from conveyor import (
    Client,
    Future,
    LocalCluster,
    fire_and_forget,
    get_client,
    get_worker,
    rejoin,
    secede,
    worker_client,
)
from conveyor.testing.cluster import until

pytestmark = pytest.mark.e2e

# worker processes cannot import this test module: its functions travel by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x: int) -> int:
    return x + 1


def fib(n: int) -> int:
    """Each call submits its two halves and waits for them from inside its task."""
    if n < 2:
        return n
    client = get_client()
    a, b = client.submit(fib, n - 1), client.submit(fib, n - 2)
    return int(a.result() + b.result())


def fib_with_worker_client(n: int) -> int:
    if n < 2:
        return n
    with worker_client() as client:
        a, b = (
            client.submit(fib_with_worker_client, n - 1),
            client.submit(fib_with_worker_client, n - 2),
        )
        return int(sum(client.gather([a, b])))


def seceded_sum(xs: list[int]) -> int:
    """Secede, wait on subtasks, rejoin, then finish on the worker's own thread."""
    secede()
    client = get_client()
    total = sum(client.gather(client.map(inc, xs)))
    rejoin()
    return total + get_worker().nthreads


class Box:
    """Hides a future from dask's argument parsing: it travels pickled, as an object."""

    def __init__(self, future: Future) -> None:
        self.future = future


def open_box(box: Box) -> int:
    return int(box.future.result()) * 10


def write(path: str, text: str) -> str:
    Path(path).write_text(text)
    return path


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True) as c:
        yield c


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as c:
        yield c


def test_get_worker_inside_a_task(client: Client) -> None:
    (address,) = client.nthreads()
    assert client.submit(lambda: get_worker().address).result() == address
    with pytest.raises(ValueError, match="inside a task"):
        get_worker()


def test_tasks_that_wait_on_subtasks_never_deadlock_a_one_thread_worker(client: Client) -> None:
    assert client.nthreads() and set(client.nthreads().values()) == {1}
    assert client.submit(fib, 7).result(timeout=60) == 13
    assert client.submit(fib_with_worker_client, 6).result(timeout=60) == 8


def test_secede_and_rejoin(client: Client, cluster: LocalCluster) -> None:
    assert client.submit(seceded_sum, [1, 2, 3]).result(timeout=60) == 9 + 1
    scheduler = cluster.scheduler
    assert scheduler is not None
    assert all(not ws.long_running for ws in scheduler.state.workers.values())


def test_a_future_inside_an_object_binds_to_the_workers_client(client: Client) -> None:
    fut = client.submit(inc, 4)
    assert client.submit(open_box, Box(fut)).result(timeout=30) == 50


def test_fire_and_forget_runs_what_nobody_holds(
    client: Client, cluster: LocalCluster, tmp_path: Path
) -> None:
    target = tmp_path / "out.txt"
    fut = client.submit(write, str(target), "done", pure=False)
    key = fut.key
    fire_and_forget(fut)
    del fut
    scheduler = cluster.scheduler
    assert scheduler is not None
    client.sync(until, lambda: target.exists(), 30.0, "the forgotten task ran")
    assert target.read_text() == "done"
    client.sync(until, lambda: key not in scheduler.tasks, 10.0, "the task was forgotten")
    assert "fire-and-forget" not in scheduler.state.clients
