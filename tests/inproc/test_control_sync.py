"""Tier 2: the control calls from a synchronous Client, against in-process LocalClusters:
restart, datasets as a mapping, metadata, replicate and retire by name, plugins,
run_on_scheduler (a LocalCluster allows remote code) and shutdown."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from conveyor import CancelledError, Client, LocalCluster, Worker, WorkerPlugin
from conveyor.server.scheduler import Scheduler


def inc(x: int) -> int:
    return x + 1


def worker_name(dask_worker: Worker) -> str:
    return str(dask_worker.name)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as c:
        yield c


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as c:
        yield c


def test_introspection_from_a_sync_client(client: Client) -> None:
    fut = client.submit(inc, 1)
    assert fut.result(timeout=10) == 2
    held = client.has_what()
    assert [k for keys in held.values() for k in keys] == [fut.key]
    assert client.nbytes([fut], summary=False)[fut.key] > 0
    assert set(client.processing()) == set(held)
    assert sorted(client.run(worker_name).values()) == ["0", "1"]
    assert client.run_on_scheduler(os.getpid) == os.getpid()  # the scheduler is here
    assert set(client.get_versions(check=True)["workers"]) == set(held)
    # a LocalCluster serves a dashboard by default (on 127.0.0.1), the client links to it
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", client.dashboard_link or "")


def test_datasets_as_a_mapping_shared_between_clients(cluster: LocalCluster) -> None:
    with Client(cluster) as a, Client(cluster) as b:
        fut = a.submit(inc, 41)
        a.datasets["answer"] = fut
        assert "answer" in b.datasets and list(b.datasets) == ["answer"]
        assert len(b.datasets) == 1
        del fut
        assert b.datasets["answer"].result(timeout=10) == 42
        del b.datasets["answer"]
        assert b.list_datasets() == []
        with pytest.raises(KeyError):
            del a.datasets["answer"]


def test_metadata_from_a_sync_client(client: Client) -> None:
    client.set_metadata(["run", "step"], 3)
    assert client.get_metadata("run") == {"step": 3}
    with pytest.raises(KeyError):
        client.get_metadata(["run", "other"])


class Marker(WorkerPlugin):
    name = "marker"

    def setup(self, worker: Worker) -> None:
        worker.marked = True  # type: ignore[attr-defined]


def test_worker_plugin_from_a_sync_client(client: Client, cluster: LocalCluster) -> None:
    replies = client.register_plugin(Marker())
    assert len(replies) == 2
    assert set(client.run(lambda dask_worker: dask_worker.marked).values()) == {True}
    client.unregister_worker_plugin("marker")


def test_replicate_and_retire_by_name() -> None:
    with (
        LocalCluster(n_workers=3, threads_per_worker=1, processes=False) as cluster,
        Client(cluster) as client,
    ):
        futs = client.map(inc, range(4), workers=[0])
        assert client.gather(futs) == [1, 2, 3, 4]
        client.replicate(futs[:1], n=2)
        assert len(client.who_has(futs[0])[futs[0].key]) == 2
        retired = client.retire_workers(names=[0])
        assert [info["name"] for info in retired.values()] == [0]
        assert cluster.scheduler is not None
        assert sorted(str(ws.name) for ws in cluster.scheduler.workers.values()) == ["1", "2"]
        assert client.gather(futs) == [1, 2, 3, 4]
        assert all(cluster.scheduler.tasks[f.key].state == "memory" for f in futs)


def test_restart_in_process_workers() -> None:
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster,
        Client(cluster) as client,
    ):
        before = set(client.run(worker_name))
        fut = client.submit(inc, 1)
        assert fut.result(timeout=10) == 2
        client.publish_dataset(kept=fut)
        client.restart()
        assert fut.status == "cancelled"
        error = fut.exception(timeout=10)
        assert isinstance(error, CancelledError) and "scheduler-restart" in str(error)
        after = client.run(worker_name)
        assert sorted(after.values()) == ["0", "1"] and not set(after) & before
        assert client.list_datasets() == []
        scheduler = cluster.scheduler
        assert isinstance(scheduler, Scheduler) and not scheduler.tasks
        again = client.submit(inc, 1)  # the same key, a fresh future
        assert again.result(timeout=10) == 2


def test_shutdown_closes_the_clients_own_cluster() -> None:
    client = Client(n_workers=1, threads_per_worker=1, processes=False)
    cluster = client.cluster
    assert isinstance(cluster, LocalCluster)
    assert client.submit(inc, 1).result(timeout=10) == 2
    client.shutdown()
    assert client.status == "closed" and cluster.status == "closed"


def test_shutdown_closes_a_cluster_passed_in() -> None:
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False)
    client = Client(cluster)
    client.shutdown()
    assert client.status == "closed" and cluster.status == "closed"
    cluster.close()  # closed already: nothing left to do
