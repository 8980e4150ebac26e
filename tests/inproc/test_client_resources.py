"""Tier 2: task options and worker resources with a real client, end to end.

Options given as keywords of submit/map/get or with ``dask.annotate`` reach the scheduler
and act (and never reach the user's function); workers declare resources; a task needing
one runs only where enough is free, and waits in no-worker until a worker offers it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import dask
import dask.array as da
import pytest
from dask import delayed
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from conveyor import Client, LocalCluster
from conveyor.client.options import task_options
from conveyor.server.resources import format_resources, parse_resources
from conveyor.server.worker import Worker
from conveyor.testing.cluster import in_process_cluster, until


def run(coro_fn, **kwargs):  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with in_process_cluster(**kwargs) as (s, workers, client):
            await coro_fn(s, workers, client)

    asyncio.run(main())


def spans(i: int) -> tuple[int, float, float]:
    """Hold for a moment; say when (the GPU tasks must never overlap)."""
    start = time.monotonic()
    time.sleep(0.02)
    return i, start, time.monotonic()


def echo_kwargs(**kwargs: Any) -> dict[str, Any]:
    return kwargs


def row_kwargs(x: int, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    return x, kwargs


_attempts: dict[str, int] = {}
_attempts_lock = threading.Lock()


def flaky(name: str, failures: int) -> str:
    """Fail the first ``failures`` calls for ``name``, then succeed."""
    with _attempts_lock:
        _attempts[name] = n = _attempts.get(name, 0) + 1
    if n <= failures:
        raise RuntimeError(f"attempt {n} of {name} fails")
    return f"{name} ok after {n}"


# --------------------------------------------------------------- resources


def test_gpu_tasks_run_on_the_gpu_worker_and_never_two_at_once() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        async with Worker(s.address, nthreads=4, name="gpu", resources={"GPU": 1}) as gpu:
            futures = [c.submit(spans, i, resources={"GPU": 1}) for i in range(10)]
            results = await c.gather(futures)
            assert sorted(r[0] for r in results) == list(range(10))
            intervals = sorted((start, stop) for _, start, stop in results)
            for (_, stop), (start, _) in itertools.pairwise(intervals):
                assert stop <= start, "two GPU tasks ran at the same time"
            where = await c.who_has(futures)
            assert {w for holders in where.values() for w in holders} == {gpu.address}
            assert s.workers[gpu.address].used_resources == {"GPU": 0.0}

    run(body, n_workers=1, nthreads=4)


def test_map_with_resources_runs_every_task_on_the_worker_offering_them() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        async with Worker(s.address, nthreads=2, name="gpu", resources="GPU=2") as gpu:
            futures = c.map(spans, range(8), resources={"GPU": 1})
            assert len(await c.gather(futures)) == 8
            where = await c.who_has(futures)
            assert {w for holders in where.values() for w in holders} == {gpu.address}

    run(body, n_workers=2, nthreads=2)


def test_task_needing_a_missing_resource_waits_until_a_worker_offers_it() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        fut = c.submit(spans, 1, resources={"TPU": 1})
        await until(lambda: fut.key in s.tasks and s.tasks[fut.key].state == "no-worker")
        text = await c.explain(fut)
        assert "no worker has any TPU (it needs 1)" in text
        assert not fut.done()
        async with Worker(s.address, nthreads=1, name="tpu", resources={"TPU": 1}) as tpu:
            assert (await fut)[0] == 1
            assert list((await c.who_has([fut]))[fut.key]) == [tpu.address]

    run(body, n_workers=1)


def test_task_restricted_to_a_worker_name_waits_for_that_worker() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        fut = c.submit(spans, 2, workers=["later"])
        await until(lambda: fut.key in s.tasks and s.tasks[fut.key].state == "no-worker")
        assert "it may only run on 'later', and none of them is connected" in (
            await c.explain(fut.key)
        )
        async with Worker(s.address, nthreads=1, name="later") as later:
            assert (await fut)[0] == 2
            assert list((await c.who_has([fut]))[fut.key]) == [later.address]

    run(body, n_workers=1)


# ------------------------------------------------------------ keyword options


def test_options_never_reach_the_function() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        fut = c.submit(
            echo_kwargs,
            resources={"CPU": 1},
            retries=1,
            priority=3,
            fifo_timeout="1s",
            workers=[workers[0].address],
            allow_other_workers=True,
            x=1,
        )
        assert await fut == {"x": 1}
        rows = c.map(row_kwargs, [1, 2], resources={"CPU": 1}, retries=1, fifo_timeout=0, y=2)
        assert await c.gather(rows) == [(1, {"y": 2}), (2, {"y": 2})]

    run(body, n_workers=1, worker_kwargs={"resources": {"CPU": 4}})


def test_bad_options_fail_the_call_before_anything_is_sent() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        with pytest.raises(TypeError, match="resources= must be a mapping"):
            c.submit(spans, 1, resources="GPU")
        with pytest.raises(ValueError, match="retries= must be >= 0"):
            c.submit(spans, 1, retries=-1)
        with pytest.raises(TypeError, match="priority= must be a number"):
            c.map(spans, [1], priority="high")
        with pytest.raises(ValueError, match="allow_other_workers=True needs workers="):
            c.submit(spans, 1, allow_other_workers=True)
        with pytest.raises(ValueError, match="Invalid duration"):
            c.submit(spans, 1, fifo_timeout="soon")
        with pytest.raises(ValueError, match="amount of 'GPU' must be >= 0"):
            c.map(spans, [1], resources={"GPU": -1})
        assert not c.futures and not s.tasks

    run(body, n_workers=1)


def test_submit_priority_orders_tasks_waiting_for_one_worker() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        gate = c.submit(spans, -1, resources={"ONE": 1}, key="gate")
        await until(
            lambda: s.tasks.get("gate") is not None and s.tasks["gate"].state == "processing"
        )
        low = c.submit(spans, 0, resources={"ONE": 1}, priority=-1, key="low")
        high = c.submit(spans, 1, resources={"ONE": 1}, priority=5, key="high")
        results = await c.gather([gate, low, high])
        assert results[2][1] < results[1][1]  # high started before low

    run(body, n_workers=1, nthreads=2, worker_kwargs={"resources": {"ONE": 1}})


# --------------------------------------------------------- dask.annotate


def test_annotated_dask_array_waits_for_its_resource_then_runs() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        with dask.annotate(resources={"TPU": 1}, priority=5, retries=2):
            x = da.ones((4, 4), chunks=(2, 2)) + 1
        fut = c.compute(x.sum())
        await until(lambda: any(ts.state == "no-worker" for ts in s.tasks.values()))
        annotated = [ts for ts in s.tasks.values() if ts.resource_restrictions]
        # the four chunk tasks carry the annotations; the aggregate does not
        assert len(annotated) == 4
        assert all(ts.resource_restrictions == {"TPU": 1.0} for ts in annotated)
        assert all(ts.retries == 2 and ts.priority[0] == -5 for ts in annotated)
        assert all(ts.state == "no-worker" for ts in annotated)
        async with Worker(s.address, nthreads=1, name="tpu", resources={"TPU": 1}):
            assert await fut == 32.0

    run(body, n_workers=1)


def test_annotated_delayed_runs_on_the_named_worker_with_retries() -> None:
    with (
        LocalCluster(n_workers=3, threads_per_worker=1, processes=False) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        target = client.scheduler_info()["workers"]
        address = next(a for a, w in target.items() if w["name"] == 2)
        with dask.annotate(workers=[address], retries=2):
            x = delayed(flaky)("delayed-annotated", 2)
        fut = client.compute(x)
        assert fut.result(timeout=10) == "delayed-annotated ok after 3"
        assert list(client.who_has([fut])[fut.key]) == [address]
        # the same through dask.compute, with retries from the annotation context
        with dask.annotate(retries=1):
            (y,) = dask.compute(delayed(flaky)("in-context", 1), scheduler=client)
        assert y == "in-context ok after 2"


def test_get_honours_its_keywords_and_layer_annotations() -> None:
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        assert client.get({"f": (flaky, "get-retries", 2)}, "f", retries=2) == (
            "get-retries ok after 3"
        )
        with pytest.raises(RuntimeError, match="attempt 1 of get-none fails"):
            client.get({"g": (flaky, "get-none", 1)}, "g")
        names = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
        layer = MaterializedLayer({"h": (flaky, "layer", 1)}, annotations={"retries": 1})
        hlg = HighLevelGraph({"h": layer}, {"h": set()})
        assert client.get(hlg, "h", workers=[names[1]]) == "layer ok after 2"
        with pytest.raises(ValueError, match="Invalid duration"):
            client.get({"k": (flaky, "x", 0)}, "k", fifo_timeout="never")


# -------------------------------------------------------- explain, sync


def test_explain_from_a_synchronous_client() -> None:
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        fut = client.submit(spans, 3, resources={"GPU": 2})
        assert "no worker has any GPU (it needs 2)" in client.explain(fut)
        done = client.submit(spans, 4)
        done.result(timeout=10)
        assert client.explain(done).startswith(f"{done.key!r} is in memory on 1 worker: ")
        assert "is not known to the scheduler" in client.explain("missing-key")
        fut.cancel()


# ------------------------------------------------------ parsing resources


def test_parse_resources_reads_mappings_and_strings() -> None:
    assert parse_resources("GPU=2,MEM=10e9") == {"GPU": 2.0, "MEM": 10e9}
    assert parse_resources("MEM=4GB") == {"MEM": 4e9}
    assert parse_resources({"GPU": 1}) == {"GPU": 1.0}
    assert parse_resources(None) == {} and parse_resources("") == {}
    assert parse_resources(format_resources({"GPU": 2.0, "X": 0.5})) == {"GPU": 2.0, "X": 0.5}
    for bad in ("GPU", "GPU=lots", "=2", {"GPU": -1}, {"GPU": True}, 3):
        with pytest.raises(ValueError):
            parse_resources(bad)


def test_worker_resources_default_to_the_configuration() -> None:
    with dask.config.set({"conveyor.worker.resources": "FPGA=1"}):
        assert Worker("inproc://nowhere").resources == {"FPGA": 1.0}
    assert Worker("inproc://nowhere", resources={"GPU": 2}).resources == {"GPU": 2.0}
    with pytest.raises(ValueError, match="bad amount of resource 'GPU'"):
        Worker("inproc://nowhere", resources="GPU=many")


def test_task_options_wire_form() -> None:
    assert task_options() == {}
    assert task_options(workers="a", allow_other_workers=True, retries=2) == {
        "workers": ["a"],
        "allow_other_workers": True,
        "retries": 2,
    }
    assert task_options(resources={"GPU": 1, "X": 0}, priority=2.5) == {
        "resources": {"GPU": 1.0},
        "priority": 2.5,
    }
    assert task_options(workers=[], allow_other_workers=False, retries=0, priority=0) == {}
    with pytest.raises(TypeError, match="allow_other_workers= must be True, False or None"):
        task_options(allow_other_workers="yes")
    with pytest.raises(TypeError, match="workers="):
        task_options(workers=[1.5])
