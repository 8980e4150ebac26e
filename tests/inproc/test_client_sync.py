"""Tier 2: the synchronous Client against an in-process LocalCluster."""

from __future__ import annotations

import copy
import gc
import socket
import time
import warnings
from collections.abc import Iterator

import dask
import dask.array as da
import pytest

from conveyor import Client, LocalCluster, as_completed, wait
from conveyor.client.current import default_client
from conveyor.client.graph import MAP_CHUNK
from conveyor.testing.cluster import until_sync


def inc(x: int) -> int:
    return x + 1


def slow(x: float) -> float:
    time.sleep(x)
    return x


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=False) as c:
        yield c


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as c:
        yield c


def test_sync_submit_map_gather(client: Client) -> None:
    assert client.submit(inc, 1).result(timeout=10) == 2
    fs = client.map(inc, range(100))
    assert client.gather(fs) == list(range(1, 101))
    assert default_client() is client


def test_map_hands_every_chunk_to_the_comm_before_returning(client: Client) -> None:
    n = 2 * MAP_CHUNK + 3
    futures = client.map(inc, range(n), pure=False)
    assert not client._outbox  # the map waited for the loop to send its last chunk
    assert client.gather(futures) == list(range(1, n + 1))


def test_result_timeout(client: Client) -> None:
    fut = client.submit(slow, 1.0, pure=False)
    with pytest.raises(TimeoutError):
        fut.result(timeout=0.05)
    assert fut.result(timeout=10) == 1.0


def test_wait_first_completed(client: Client) -> None:
    quick = client.submit(slow, 0.0, pure=False)
    long = client.submit(slow, 2.0, pure=False)
    done, not_done = wait([quick, long], return_when="FIRST_COMPLETED")
    assert quick in done and long in not_done
    client.cancel([long])


def test_as_completed_with_results(client: Client) -> None:
    fs = client.map(inc, range(10))
    results = sorted(r for _, r in as_completed(fs, with_results=True))
    assert results == list(range(1, 11))


def test_garbage_collected_futures_are_released(client: Client, cluster: LocalCluster) -> None:
    fut = client.submit(inc, 123)
    key = fut.key
    assert fut.result() == 124
    assert cluster.scheduler is not None
    assert key in cluster.scheduler.tasks
    del fut
    gc.collect()
    tasks = cluster.scheduler.tasks
    until_sync(lambda: key not in tasks, timeout=5, what="the released key forgotten")


def test_dask_compute_with_client(client: Client) -> None:
    da = pytest.importorskip("dask.array")
    x = da.ones((200, 200), chunks=(50, 50))
    (total,) = dask.compute((x + 1).sum(), scheduler=client)
    assert total == 2 * 200 * 200
    delayed_sum = dask.delayed(sum)([dask.delayed(inc)(i) for i in range(10)])
    assert dask.compute(delayed_sum, scheduler=client) == (55,)


def test_client_get_dict_graph(client: Client) -> None:
    dsk = {"a": 1, "b": (inc, "a"), "c": (sum, ["a", "b"])}
    assert client.get(dsk, "c") == 3
    assert client.get(dsk, ["a", ["b", "c"]]) == [1, [2, 3]]


def test_futures_inside_delayed(client: Client) -> None:
    fut = client.submit(inc, 1)
    result = dask.compute(dask.delayed(inc)(fut), scheduler=client)
    assert result == (3,)


def test_client_to_nothing_fails_fast() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(OSError, match="Could not connect"):
        Client(f"tcp://127.0.0.1:{port}", timeout=0.5)
    assert time.monotonic() - start < 5


def test_dropping_futures_right_after_submitting_their_dependents(client: Client) -> None:
    """A release must never overtake a submission that names the released key."""
    level = client.map(inc, range(64))
    while len(level) > 1:  # each level drops the previous one as soon as it is built
        level = [client.submit(sum, level[i : i + 2]) for i in range(0, len(level), 2)]
    assert level[0].result(timeout=30) == sum(range(1, 65))


def test_large_arguments_warn_with_the_fix(client: Client) -> None:
    big = b"x" * 2_000_000
    with pytest.warns(UserWarning, match=r"scatter them once"):
        fut = client.submit(len, big)
    assert fut.result() == 2_000_000
    with pytest.warns(UserWarning, match=r"a map pickle to"):
        assert client.gather(client.map(len, [big, big])) == [2_000_000, 2_000_000]
    scattered = client.scatter(big)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert client.submit(len, scattered).result() == 2_000_000


def test_map_batch_size_sets_the_tasks_per_message(client: Client) -> None:
    sent_before = client.scheduler.messages_sent if client.scheduler else 0
    futures = client.map(inc, range(10), batch_size=3, pure=False)
    assert client.gather(futures) == list(range(1, 11))
    assert client.scheduler is not None
    assert client.scheduler.messages_sent - sent_before >= 4  # ceil(10 / 3) update-graphs
    with pytest.raises(ValueError, match="batch_size"):
        client.map(inc, range(3), batch_size=0)


def test_copies_of_a_client_share_its_connection(client: Client) -> None:
    holder = {"scheduler": client, "n": [1]}
    deep = copy.deepcopy(holder)
    assert deep["scheduler"] is client and deep["n"] is not holder["n"]
    assert copy.copy(client) is client
    assert client.submit(lambda: 5).result() == 5


def test_wait_takes_persisted_collections(client: Client) -> None:
    x = da.arange(1_000_000, chunks=100_000).persist()
    done, not_done = wait(x, timeout=30)  # never iterates the array's elements
    assert len(done) == 10 and not not_done
    done, _ = wait([x, client.submit(sum, [1, 2])], timeout=30)
    assert len(done) == 11
