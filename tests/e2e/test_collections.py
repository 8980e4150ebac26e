"""Dask collections through a conveyor client on worker processes: the default scheduler,
compute/persist/get, futures inside graphs, and graphs that once broke the client."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pytest
from dask.base import tokenize

from conveyor import Client, Future, LocalCluster, futures_of
from conveyor.client import current
from conveyor.client.stores import _store_functions, check_stores

pd = pytest.importorskip("pandas")
dd = pytest.importorskip("dask.dataframe")

pytestmark = pytest.mark.e2e

# worker processes cannot import this test module: its functions travel by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x: int) -> int:
    return x + 1


def series(x: int) -> pd.Series:
    return pd.Series([x, x + 1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as c:
        yield c


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as c:
        yield c


def test_a_default_client_is_dasks_scheduler_until_it_closes(cluster: LocalCluster) -> None:
    with dask.config.set(scheduler="threads"):
        with Client(cluster) as c:
            assert dask.config.get("scheduler") == "conveyor"
            pid = dask.delayed(os.getpid)().compute()
            assert pid != os.getpid()  # ran in a worker process
            assert da.arange(10, chunks=3).sum().compute() == 45
            assert dask.config.get("dataframe.shuffle.method") == "tasks"
            assert c.status == "running"
        assert dask.config.get("scheduler") == "threads"
    assert dask.config.get("dataframe.shuffle.method", None) is None


def test_as_current_scopes_the_default(cluster: LocalCluster) -> None:
    with Client(cluster) as first, Client(cluster, set_as_default=False) as second:
        assert current.default_client() is first
        with second.as_current():
            assert current.default_client() is second
            assert dask.delayed(inc)(1).compute() == 2
        assert current.default_client() is first
    with pytest.raises(ValueError, match="No client"):
        current.default_client()


def test_the_last_default_client_closing_restores_the_previous_one(
    cluster: LocalCluster,
) -> None:
    first = Client(cluster)
    second = Client(cluster)
    try:
        assert current.default_client() is second
        second.close()
        assert current.default_client() is first
        assert dask.config.get("scheduler") == "conveyor"
    finally:
        second.close()
        first.close()
    assert dask.config.get("scheduler", None) is None


def test_compute_returns_futures_or_results(client: Client) -> None:
    x = da.arange(100, chunks=10)
    fut = client.compute(x.sum())
    assert isinstance(fut, Future)
    assert fut.result() == 4950
    futures = client.compute([x.sum(), x.mean(), 5])
    assert isinstance(futures[0], Future) and futures[2] == 5
    assert client.gather(futures) == [4950, 49.5, 5]
    assert client.compute((x.max(), x.min()), sync=True) == [99, 0]
    # containers of collections are computed as one value when traverse=True
    assert client.compute([[x.sum(), x.max()]], sync=True) == [[4950, 99]]


def test_persist_keeps_the_collection_on_the_cluster(client: Client) -> None:
    x = da.arange(100, chunks=10) + 1
    y = client.persist(x)
    futures = futures_of(y)
    assert len(futures) == 10
    assert all(isinstance(f, Future) for f in futures)
    client.gather(futures)  # all computed
    assert set(client.who_has(futures)) == {f.key for f in futures}
    assert (y * 2).sum().compute() == 2 * sum(range(1, 101))
    assert (y.compute() == np.arange(1, 101)).all()


def test_dask_persist_and_method_use_the_default_client(client: Client) -> None:
    x = db.from_sequence(range(20), npartitions=4).map(inc)
    (y,) = dask.persist(x)
    assert len(futures_of(y)) == 4
    assert sorted(y.compute()) == list(range(1, 21))
    z = da.ones((10, 10), chunks=5).persist()
    assert len(futures_of(z)) == 4
    assert z.sum().compute() == 100


def test_get_sync_false_returns_futures_in_the_keys_structure(client: Client) -> None:
    graph = {"a": (inc, 1), "b": (inc, "a"), ("c", 0): (sum, ["a", "b"])}
    out = client.get(graph, ["a", ["b", ("c", 0)]], sync=False)
    assert isinstance(out[0], Future) and isinstance(out[1][1], Future)
    assert client.gather(out) == [2, [3, 5]]
    assert client.get(graph, ("c", 0)) == 5


def test_futures_embed_in_dask_graphs(client: Client) -> None:
    fut = client.submit(inc, 10)
    assert dask.delayed(inc)(fut).compute() == 12
    parts = [client.submit(series, i) for i in (1, 5)]
    df = dd.from_delayed(parts, meta=pd.Series(dtype="int64"), verify_meta=False)
    assert df.compute().tolist() == [1, 2, 5, 6]
    assert tokenize(fut) == tokenize(Future(fut.key, client))
    assert tokenize(fut) != tokenize(client.submit(inc, 11))


def test_from_delayed_partitions_filed_under_other_keys(client: Client) -> None:
    df = dd.from_delayed([dask.delayed(series)(1), dask.delayed(series)(2)], verify_meta=False)
    assert df.compute().tolist() == [1, 2, 2, 3]


def test_keys_holding_numpy_scalars(client: Client) -> None:
    x = da.diagonal(da.ones((8, 8), chunks=4)) + da.ones((8, 8), chunks=4)
    (result,) = dask.compute(x)
    np.testing.assert_array_equal(result, np.diagonal(np.ones((8, 8))) + np.ones((8, 8)))
    assert client.submit(inc, 1).result() == 2  # the connection survived


def test_a_message_that_cannot_be_encoded_fails_only_its_call(client: Client) -> None:
    class Odd:
        def __hash__(self) -> int:
            return 1

    with pytest.raises(TypeError, match="cannot be a task key"):
        client.submit(inc, 1, key=Odd())
    # a request the codec refuses fails alone; the connection carries on
    with pytest.raises(TypeError, match="cannot send 'who-has'"):
        client.sync(client._request, {"op": "who-has", "keys": [Odd()]})
    assert client.submit(inc, 2).result(timeout=10) == 3
    assert client.status == "running"


def test_dataframe_shuffle_groupby_and_merge_across_processes(client: Client) -> None:
    pdf = pd.DataFrame({"a": np.arange(2000) % 13, "b": np.arange(2000)})
    df = dd.from_pandas(pdf, npartitions=6)
    assert df.set_index("a").b.sum().compute() == pdf.b.sum()
    got = df.groupby("a").b.sum().compute().sort_index()
    pd.testing.assert_series_equal(got, pdf.groupby("a").b.sum())
    right = dd.from_pandas(pd.DataFrame({"a": range(13), "c": range(13)}), npartitions=2)
    merged = df.merge(right, on="a").compute()
    assert len(merged) == 2000 and (merged.c == merged.a).all()
    ordered = df.sort_values("b", ascending=False).b.compute()
    assert ordered.tolist() == sorted(pdf.b, reverse=True)


class FileTarget:
    """A store target every worker process can write: a .npy file, opened per write.
    Each write logs when it starts and ends, to show that writers never overlap."""

    def __init__(self, path: str, log: str) -> None:
        self.path = path
        self.log = log
        self.shape = (40, 40)
        self.dtype = np.dtype("f8")

    def __setitem__(self, region: Any, value: Any) -> None:
        with open(self.log, "a") as log:
            log.write(f"start {time.monotonic()}\n")
        array = np.load(self.path, mmap_mode="r+")
        array[region] = value
        array.flush()
        time.sleep(0.01)  # widens the critical section, so that unlocked writers overlap
        with open(self.log, "a") as log:
            log.write(f"end {time.monotonic()}\n")


def test_store_takes_a_lock_that_works_across_processes(client: Client, tmp_path: Path) -> None:
    path, log = tmp_path / "target.npy", tmp_path / "writes.log"
    np.save(path, np.zeros((40, 40)))
    x = da.arange(1600, chunks=100).reshape((40, 40)).astype("f8")
    da.store(x, FileTarget(str(path), str(log)), lock=True)
    np.testing.assert_array_equal(np.load(path), np.arange(1600).reshape((40, 40)))
    events = [line.split()[0] for line in log.read_text().splitlines()]
    assert len(events) >= 32  # at least 16 writes
    assert events == ["start", "end"] * (len(events) // 2)  # never two writers at once


def test_store_locks_are_swapped_for_cluster_locks_without_touching_dasks_graph() -> None:
    x = da.ones((4, 4), chunks=2)
    stored = da.store(x, FileTarget("unused", "unused"), lock=True, compute=False)
    graph = dict(stored.__dask_graph__())
    fixed = check_stores(graph, lambda name: ("cluster-lock", name))
    locks = [lock for node in fixed.values() for lock in _store_locks(node)]
    assert len(locks) == 4 and {lock[0] for lock in locks} == {"cluster-lock"}
    assert len({lock[1] for lock in locks}) == 1  # one lock for the whole store
    assert all(
        type(lock).__name__ == "SerializableLock"
        for n in graph.values()
        for lock in _store_locks(n)
    )


def _store_locks(node: Any) -> list[Any]:
    if getattr(node, "func", None) in _store_functions():
        return [node.kwargs["lock"]]
    inner = node.args[0] if getattr(node, "args", None) and isinstance(node.args[0], dict) else {}
    return [lock for n in inner.values() for lock in _store_locks(n)]


def test_store_into_a_client_side_array_is_refused(client: Client, tmp_path: Path) -> None:
    memmap = np.memmap(tmp_path / "m.dat", mode="w+", shape=(4, 4), dtype="f8")
    for target in (np.zeros((4, 4)), memmap):
        with pytest.raises(ValueError, match=r"numpy.ndarray held by this process"):
            da.store(da.ones((4, 4), chunks=2), target)
