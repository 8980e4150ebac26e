"""Tier 2: the Client's introspection and control calls against in-process servers over
TCP, with an asynchronous client: what is where, run, run_on_scheduler, plugins,
uploads, metadata, published datasets, replicate, rebalance, retire, retry, versions,
scheduler files and shutdown."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest

from conveyor import Client, NannyPlugin, RemoteError, SchedulerPlugin, Worker, WorkerPlugin
from conveyor.core import events as se
from conveyor.server.scheduler import Scheduler
from conveyor.testing.cluster import in_process_cluster, until

Body = Callable[[Scheduler, list[Worker], Client], Awaitable[None]]


def run(body: Body, **kwargs: Any) -> None:
    async def main() -> None:
        async with in_process_cluster(**kwargs) as (s, workers, client):
            await body(s, workers, client)

    asyncio.run(main())


def inc(x: int) -> int:
    return x + 1


def where_am_i(dask_worker: Worker) -> str:
    return str(dask_worker.name)


async def sleepy(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


def boom() -> None:
    raise ZeroDivisionError("boom")


# Functions travel pickled; in-process workers share these module globals with the test.
RELEASE = threading.Event()
CALLS: list[str] = []
FLAKY = {"fail": True}


def wait_for_release(x: int) -> int:
    RELEASE.wait(10)
    return x


def note(dask_worker: Worker) -> None:
    CALLS.append(dask_worker.address)


def flaky(x: int) -> int:
    if FLAKY["fail"]:
        raise ValueError("not yet")
    return x


# ------------------------------------------------------------ what is where


def test_scheduler_info_has_distributeds_main_keys() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        info = await c.scheduler_info()
        assert info["type"] == "Scheduler" and info["id"] == s.id
        assert info["address"] == s.address and info["services"] == {}
        assert set(info["workers"]) == {w.address for w in workers}
        w0 = info["workers"][workers[0].address]
        assert w0["name"] == "w0" and w0["nthreads"] == 1 and w0["type"] == "Worker"
        assert w0["host"] == "127.0.0.1" and "memory_limit" in w0

    run(body)


def test_has_what_nbytes_and_processing() -> None:
    RELEASE.clear()

    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        a = c.submit(inc, 1, workers=[workers[0].address])
        b = c.submit(np.ones, 100, workers=[workers[1].address])
        await c.gather([a, b])
        held = await c.has_what()
        assert held == {workers[0].address: [a.key], workers[1].address: [b.key]}
        assert await c.has_what(workers[1].address) == {workers[1].address: [b.key]}
        sizes = await c.nbytes(summary=False)
        assert sizes[b.key] == np.ones(100).nbytes and sizes[a.key] > 0
        assert await c.nbytes([b], summary=False) == {b.key: 800}
        assert (await c.nbytes())["ones"] == 800  # summed per key prefix
        blocked = c.submit(wait_for_release, 5, workers=[workers[0].address])
        await until(
            lambda: (
                s.tasks.get(blocked.key) is not None and s.tasks[blocked.key].state == "processing"
            )
        )
        running = await c.processing()
        assert running == {workers[0].address: [blocked.key], workers[1].address: []}
        RELEASE.set()
        assert await blocked == 5
        assert await c.processing(workers[0].address) == {workers[0].address: []}

    try:
        run(body)
    finally:
        RELEASE.set()


def test_dashboard_link_is_none_without_a_dashboard() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        assert c.dashboard_link is None

    run(body)


# --------------------------------------------------------------------- run


def test_run_on_every_worker_and_on_some() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        a0, a1 = workers[0].address, workers[1].address
        assert await c.run(inc, 1) == {a0: 2, a1: 2}
        assert await c.run(where_am_i) == {a0: "w0", a1: "w1"}
        assert await c.run(sleepy, 4, workers=["w1"]) == {a1: 8}  # by name; awaited
        assert await c.run(lambda x, y=0: x + y, 1, y=2, workers=[a0]) == {a0: 3}
        with pytest.raises(ValueError, match="no worker at or named 'nope'"):
            await c.run(inc, 1, workers=["nope"])
        with pytest.raises(ValueError, match="without a nanny"):
            await c.run(inc, 1, nanny=True)

    run(body)


def test_run_errors_raise_return_or_are_ignored() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        with pytest.raises(ZeroDivisionError, match="boom") as info:
            await c.run(boom)
        assert any(entry.name == "boom" for entry in info.traceback)  # the remote frame
        returned = await c.run(boom, on_error="return")
        assert set(returned) == {w.address for w in workers}
        assert all(isinstance(e, ZeroDivisionError) for e in returned.values())
        assert await c.run(boom, on_error="ignore") == {}
        with pytest.raises(ValueError, match="on_error"):
            c.run(boom, on_error="shrug")

    run(body)


def test_run_without_waiting() -> None:
    CALLS.clear()

    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        assert await c.run(note, wait=False) is None
        await until(lambda: len(CALLS) == 2, what="both workers ran it")
        assert sorted(CALLS) == sorted(w.address for w in workers)

    run(body)


def test_run_on_scheduler_is_refused_unless_remote_code_is_allowed() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        with pytest.raises(PermissionError, match=r"allow_remote_code=True.*--allow-remote-code"):
            await c.run_on_scheduler(inc, 1)
        assert not s.allow_remote_code

    run(body)


def test_run_on_scheduler_when_allowed() -> None:
    def count_workers(dask_scheduler: Scheduler) -> int:
        return len(dask_scheduler.workers)

    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        assert await c.run_on_scheduler(inc, 41) == 42
        assert await c.run_on_scheduler(count_workers) == 2
        assert await c.run_on_scheduler(sleepy, 3) == 6
        with pytest.raises(ZeroDivisionError, match="boom"):
            await c.run_on_scheduler(boom)

    run(body, scheduler_kwargs={"allow_remote_code": True})


# ----------------------------------------------------------------- plugins


class Tagger(WorkerPlugin):
    """Sets an attribute on each worker; counts teardowns."""

    name = "tagger"
    torn_down: list[str] = []

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def setup(self, worker: Worker) -> None:
        worker.tag = self.tag  # type: ignore[attr-defined]

    def teardown(self, worker: Worker) -> None:
        Tagger.torn_down.append(f"{worker.name}:{self.tag}")


class Broken(WorkerPlugin):
    def setup(self, worker: Worker) -> None:
        raise RuntimeError("cannot set up")


def read_tag(dask_worker: Worker) -> str:
    return str(getattr(dask_worker, "tag", None))


def test_worker_plugin_reaches_every_worker_and_late_joiners() -> None:
    Tagger.torn_down = []

    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        replies = await c.register_plugin(Tagger("one"))
        assert replies == {w.address: {"status": "OK"} for w in workers}
        assert set((await c.run(read_tag)).values()) == {"one"}
        assert all("tagger" in w.plugins for w in workers)
        # a worker that joins later gets it before its first task
        async with Worker(s.address, nthreads=1, name="late") as late:
            assert late.tag == "one"  # type: ignore[attr-defined]
            fut = c.submit(read_tag_in_task, workers=[late.address], pure=False)
            assert await fut == "one"
            # same name: replaced (the old one torn down), unless idempotent
            await c.register_plugin(Tagger("two"))
            assert await c.register_plugin(Tagger("three"), idempotent=True) == {}
            assert set((await c.run(read_tag)).values()) == {"two"}
            assert sorted(Tagger.torn_down) == ["late:one", "w0:one", "w1:one"]
            await c.unregister_worker_plugin("tagger")
            assert not late.plugins
            assert sorted(Tagger.torn_down) == sorted(
                f"{w}:{tag}" for w in ("late", "w0", "w1") for tag in ("one", "two")
            )
        with pytest.raises(ValueError, match="no worker plugin named 'tagger'"):
            await c.unregister_worker_plugin("tagger")

    run(body)


def read_tag_in_task() -> str:
    from conveyor import get_worker

    return read_tag(get_worker())


def test_worker_plugin_setup_errors_are_raised() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        with pytest.raises(RuntimeError, match="cannot set up"):
            await c.register_plugin(Broken(), name="broken")

    run(body)


def test_nanny_plugins_wait_for_nannies_and_non_plugins_are_refused() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        # in-process workers have no nanny: the plugin is kept for nannies to come
        assert await c.register_plugin(NannyPlugin(), name="later") == {}
        assert "later" in s.extensions["nannies"].plugins
        await c.unregister_worker_plugin("later", nanny=True)
        assert "later" not in s.extensions["nannies"].plugins
        with pytest.raises(TypeError, match="not a SchedulerPlugin, WorkerPlugin or NannyPlugin"):
            c.register_plugin(object())
        with pytest.raises(TypeError, match="not a NannyPlugin"):
            c.register_worker_plugin(WorkerPlugin(), nanny=True)

    run(body)


class WorkerCounter(SchedulerPlugin):
    name = "counter"

    def __init__(self) -> None:
        self.added: list[str] = []

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        self.added.append(worker)


def test_scheduler_plugin_from_a_client_needs_remote_code() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        with pytest.raises(PermissionError, match="allow-remote-code"):
            await c.register_plugin(WorkerCounter())
        assert "counter" not in s.plugins

    run(body)


def test_scheduler_plugin_from_a_client_when_allowed() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        await c.register_plugin(WorkerCounter())
        plugin = s.plugins["counter"]
        assert isinstance(plugin, WorkerCounter) and plugin.added == []
        async with Worker(s.address, nthreads=1, name="late") as late:
            assert plugin.added == [late.address]
        await c.unregister_scheduler_plugin("counter")
        assert "counter" not in s.plugins
        # the operator's plugins are not the clients' to replace or remove
        with pytest.raises(ValueError, match="is the operator's"):
            await c.register_plugin(WorkerCounter(), name="coordination")
        with pytest.raises(ValueError, match="registered by a client"):
            await c.unregister_scheduler_plugin("coordination")
        assert "coordination" in s.plugins

    run(body, scheduler_kwargs={"allow_remote_code": True})


def test_upload_file_is_importable_in_tasks_and_replaced_by_a_new_version(
    tmp_path: Path,
) -> None:
    module = "conveyor_uploaded_inproc"
    source = tmp_path / f"{module}.py"

    def version() -> int:
        import importlib

        return int(importlib.import_module(module).VERSION)

    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        source.write_text("VERSION = 1\n")
        assert await c.upload_file(source) == {w.address: {"status": "OK"} for w in workers}
        assert await c.submit(version, pure=False) == 1
        source.write_text("VERSION = 2\n")
        await c.upload_file(str(source))
        assert set((await c.run(version)).values()) == {2}
        async with Worker(s.address, nthreads=1, name="late") as late:
            assert await c.run(version, workers=[late.address]) == {late.address: 2}
            directory = late.control.upload_directory()
        assert directory not in sys.path  # taken off when the worker closed

    try:
        run(body)
    finally:
        sys.modules.pop(module, None)


# --------------------------------------------------------- metadata, datasets


def test_metadata_nested_paths_and_defaults() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        await c.set_metadata("a", 1)
        await c.set_metadata(["b", "c", "d"], {"x": [1, 2]})
        assert await c.get_metadata("a") == 1
        assert await c.get_metadata(["b", "c"]) == {"d": {"x": (1, 2)}}
        assert await c.get_metadata(["b", "c", "d", "x"]) == (1, 2)
        assert await c.get_metadata("missing", None) is None
        with pytest.raises(KeyError):
            await c.get_metadata(["b", "nope"])
        await c.set_metadata(["a", "deeper"], 2)  # replaces a value that is not a dict
        assert await c.get_metadata("a") == {"deeper": 2}

    run(body)


def test_published_future_outlives_its_client() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        async with Client(s.address, asynchronous=True, set_as_default=False) as other:
            fut = c.submit(inc, 10)
            key = fut.key
            await c.publish_dataset(fut, name="answer")
            await c.publish_dataset(extra=[1, 2, 3])
            assert await c.list_datasets() == ["answer", "extra"]
            del fut
            await c.close()  # the publisher is gone
            got = await other.get_dataset("answer")
            assert got.key == key and await got == 11
            assert await other.get_dataset("extra") == [1, 2, 3]
            assert await other.get_dataset("nope", default="d") == "d"
            with pytest.raises(KeyError, match="nope"):
                await other.get_dataset("nope")
            with pytest.raises(KeyError, match="already exists"):
                await other.publish_dataset(answer=5)
            await other.publish_dataset(answer=5, override=True)
            assert await other.datasets["answer"] == 5
            del got
            await until(lambda: key not in s.tasks, what="the overridden future released")
            await other.unpublish_dataset("answer")
            with pytest.raises(KeyError):
                await other.unpublish_dataset("answer")
            assert await other.list_datasets() == ["extra"]
            with pytest.raises(TypeError, match="asynchronous"):
                other.datasets["x"] = 1

    run(body)


def test_published_collection_of_futures_keeps_working() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        parts = [c.submit(np.full, 3, float(i), pure=False) for i in range(4)]
        await c.gather(parts)
        name = "published-array"
        dsk = {(name, i): part for i, part in enumerate(parts)}
        array = da.Array(dsk, name, chunks=((3,) * 4,), dtype=float)
        keys = [p.key for p in parts]
        await c.publish_dataset(array, name="array")
        del parts, dsk, array
        await until(lambda: all(k not in c.futures for k in keys), what="released here")
        assert all(s.tasks[k].state == "memory" for k in keys)  # held for the dataset
        got = await c.get_dataset("array")
        total = await c.compute(got.sum())
        assert total == 3 * (0 + 1 + 2 + 3)

    run(body)


# ------------------------------------------------------------- moving data


def test_replicate_to_n_and_to_all_then_back_down() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        fut = c.submit(inc, 1, workers=[workers[0].address])
        await c.replicate(fut, n=2)
        assert len((await c.who_has(fut))[fut.key]) == 2
        await c.replicate([fut])
        assert sorted((await c.who_has(fut))[fut.key]) == sorted(w.address for w in workers)
        assert all(fut.key in w.data for w in workers)
        await c.replicate(fut, n=1)
        holders = (await c.who_has(fut))[fut.key]
        assert len(holders) == 1
        await until(lambda: sum(fut.key in w.data for w in workers) == 1, what="copies freed")
        assert await fut == 2
        with pytest.raises(ValueError, match="positive"):
            c.replicate(fut, n=0)

    run(body, n_workers=3)


def test_replicate_spreads_as_a_tree_with_branching_factor() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        fut = c.submit(inc, 1, workers=[workers[0].address])
        await fut
        asked: list[int] = []
        apply = s.apply

        def recording(event: Any) -> Any:
            if isinstance(event, se.CopyReplicas):
                asked.append(sum(len(keys) for keys in event.copies.values()))
            return apply(event)

        s.apply = recording  # type: ignore[method-assign]
        await c.replicate(fut, branching_factor=1)
        assert all(fut.key in w.data for w in workers)
        # one holder feeds one recipient; then two feed the last two
        assert asked[:2] == [1, 2]
        with pytest.raises(ValueError, match="branching_factor must be a positive integer"):
            c.replicate(fut, branching_factor=0)

    run(body, n_workers=4)


def test_rebalance_evens_out_data() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        futs = c.map(np.ones, [1000] * 6, workers=[workers[0].address], pure=False)
        await c.gather(futs)
        assert len(workers[0].data) == 6
        await c.rebalance()
        held = await c.has_what()
        counts = sorted(len(held[w.address]) for w in workers)
        assert counts == [3, 3]
        await until(lambda: len(workers[0].data) == 3, what="moved copies freed")
        assert [x.sum() for x in await c.gather(futs)] == [1000.0] * 6

    run(body)


def test_retire_workers_moves_their_data_first() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        w0, w1 = workers
        futs = c.map(inc, range(5), workers=[w0.address])
        await c.gather(futs)
        retired = await c.retire_workers(names=["w0"])
        assert list(retired) == [w0.address] and retired[w0.address]["name"] == "w0"
        assert w0.status == "closed" and set(s.workers) == {w1.address}
        assert all(s.tasks[f.key].state == "memory" for f in futs)  # nothing recomputed
        assert all(f.key in w1.data for f in futs)
        assert await c.gather(futs) == [1, 2, 3, 4, 5]
        assert await c.retire_workers(workers=["tcp://127.0.0.1:1"]) == {}
        with pytest.raises(TypeError, match="without workers/names"):
            c.retire_workers(workers=[w1.address], n=1)
        with pytest.raises(TypeError, match="must be a number"):
            c.retire_workers(n="one")

    run(body)


def test_retire_workers_without_names_lets_the_scheduler_choose() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        w0, w1, w2 = workers
        big = c.submit(np.ones, 10_000, workers=[w0.address])
        small = c.submit(np.ones, 10, workers=[w1.address])
        await c.gather([big, small])
        assert s.workers_to_close(n=2, attribute="name") == ["w2", "w1"]  # least data first
        retired = await c.retire_workers(n=2)
        assert sorted(retired) == sorted([w1.address, w2.address])
        assert set(s.workers) == {w0.address}
        assert s.tasks[small.key].state == "memory"  # moved, not recomputed
        assert (await small).sum() == 10
        # the scheduler keeps at least one worker holding data
        assert await s.retire_workers() == {}

    run(body, n_workers=3)


def test_the_last_worker_keeps_data_that_has_nowhere_to_go() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        fut = c.submit(inc, 1)
        await fut
        assert await c.retire_workers(workers=[w.address for w in workers]) == {}
        assert all(ws.status == "running" for ws in s.workers.values())
        assert await fut == 2

    run(body, n_workers=1)


def test_retry_runs_failed_tasks_again() -> None:
    FLAKY["fail"] = True

    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        fut = c.submit(flaky, 3)
        total = c.submit(inc, fut)
        with pytest.raises(ValueError, match="not yet"):
            await total
        FLAKY["fail"] = False
        await c.retry(total)
        assert await total == 4 and await fut == 3

    run(body)


def test_restart_needs_nannies_or_a_local_cluster() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        fut = c.submit(inc, 1)
        await fut
        with pytest.raises(RemoteError, match="cannot restart workers without a nanny"):
            await c.restart()
        assert s.tasks[fut.key].state == "memory"  # nothing was changed

    run(body)


def test_tasks_submitted_before_any_worker_run_when_one_joins() -> None:
    async def main() -> None:
        async with (
            Scheduler(host="127.0.0.1", port=0) as s,
            Client(s.address, asynchronous=True, set_as_default=False) as c,
        ):
            futs = c.map(inc, range(5))
            await until(lambda: len(s.tasks) == 5)
            async with Worker(s.address, nthreads=1):
                assert await asyncio.wait_for(c.gather(futs), 10) == [1, 2, 3, 4, 5]

    asyncio.run(main())


# ------------------------------------------------------------ the cluster


def test_get_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        found = await c.get_versions(check=True)
        assert set(found) == {"client", "scheduler", "workers"}
        assert set(found["workers"]) == {w.address for w in workers}
        packages = found["scheduler"]["packages"]
        assert {"python", "conveyor", "dask", "msgpack", "cloudpickle"} <= set(packages)
        assert packages["conveyor"] == found["client"]["packages"]["conveyor"]
        from conveyor.client import control

        fake = control.versions()
        fake["packages"]["cloudpickle"] = "0.0.1"
        monkeypatch.setattr(control, "versions", lambda: fake)
        with pytest.raises(ValueError, match="cloudpickle"):
            await c.get_versions(check=True)
        assert (await c.get_versions())["client"]["packages"]["cloudpickle"] == "0.0.1"

    run(body)


def test_write_scheduler_file_lets_another_client_connect(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.json"

    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        await c.write_scheduler_file(str(path))
        info = json.loads(path.read_text())
        assert info["address"] == s.address and info["type"] == "Scheduler"
        other = Client(scheduler_file=str(path), asynchronous=True, set_as_default=False)
        async with other:
            assert await other.submit(inc, 1) == 2
            with pytest.raises(ValueError, match="already uses the scheduler file"):
                other.write_scheduler_file(str(path))

    run(body)


def test_shutdown_closes_the_scheduler_and_its_workers() -> None:
    async def body(s: Scheduler, workers: list[Worker], c: Client) -> None:
        await c.shutdown()
        assert c.status == "closed"
        await asyncio.wait_for(s.finished(), 10)
        await asyncio.wait_for(asyncio.gather(*(w.finished() for w in workers)), 10)

    run(body)
