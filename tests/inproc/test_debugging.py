"""Tier 2: recreate_error_locally / recreate_task_locally run the remote task here."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dask
import pytest

from conveyor import Client, LocalCluster


def inc(x: int) -> int:
    return x + 1


def divide(x: int, y: int) -> float:
    return x / y


def where_am_i(x: int) -> tuple[int, int]:
    return x, threading.get_ident()


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as c:
        yield c


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as c:
        yield c


def test_recreate_error_locally_runs_the_blamed_task_here(client: Client) -> None:
    a = client.submit(inc, 1)
    bad = client.submit(divide, a, 0)
    downstream = client.submit(inc, bad)
    with pytest.raises(ZeroDivisionError):
        downstream.result()
    with pytest.raises(ZeroDivisionError) as info:
        client.recreate_error_locally(downstream)
    assert info.traceback[-1].name == "divide"  # raised by this process's own call
    assert info.traceback[-1].frame.f_locals == {"x": 2, "y": 0}  # the real input


def test_recreate_error_locally_for_map_and_graph_tasks(client: Client) -> None:
    failing = client.map(divide, [1, 2], [1, 0])
    with pytest.raises(ZeroDivisionError):
        client.recreate_error_locally(failing[1])
    graph = dask.delayed(divide)(dask.delayed(inc)(3), 0)
    fut = client.compute(graph)
    with pytest.raises(ZeroDivisionError) as info:
        client.recreate_error_locally(fut)
    assert info.traceback[-1].frame.f_locals == {"x": 4, "y": 0}


def test_recreate_task_locally_returns_the_result_computed_here(client: Client) -> None:
    a = client.submit(inc, 41)
    fut = client.submit(where_am_i, a)
    value, remote_thread = fut.result()
    assert value == 42 and remote_thread != threading.get_ident()
    assert client.recreate_task_locally(fut) == (42, threading.get_ident())


def test_recreate_error_locally_refuses_a_future_that_did_not_fail(client: Client) -> None:
    fut = client.submit(inc, 1)
    with pytest.raises(ValueError, match="did not fail"):
        client.recreate_error_locally(fut)
    with pytest.raises(TypeError):
        client.recreate_error_locally(42)  # type: ignore[arg-type]
