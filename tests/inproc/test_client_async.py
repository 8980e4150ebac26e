"""Tier 2: scheduler, workers and an asynchronous client in one event loop."""

from __future__ import annotations

import asyncio
import operator
import traceback

import dask.array as da
import pytest

from conveyor import CancelledError, Future, as_completed, futures_of, wait
from conveyor.client import graph as graph_module
from conveyor.client.graph import graph_messages
from conveyor.testing.cluster import in_process_cluster, until


def inc(x: int) -> int:
    return x + 1


def add(*args: int, offset: int = 0) -> int:
    return sum(args) + offset


def fail(x: int) -> int:
    raise ZeroDivisionError(f"cannot divide {x}")


def run(coro_fn, **kwargs):  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with in_process_cluster(**kwargs) as (s, workers, client):
            await coro_fn(s, workers, client)

    asyncio.run(main())


@pytest.mark.parametrize("protocol", ["tcp", "inproc"])
def test_submit_and_result(protocol: str) -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        fut = c.submit(inc, 10)
        assert isinstance(fut, Future)
        assert await fut == 11
        assert await fut.result() == 11
        assert fut.status == "finished" and fut.done() and not fut.cancelled()

    run(body, protocol=protocol)


def test_map_with_several_iterables_and_kwargs() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        fs = c.map(add, range(5), range(10, 15), offset=100)
        assert await c.gather(fs) == [100 + i + 10 + i for i in range(5)]

    run(body)


def test_map_over_futures_and_containers_of_them() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        xs = c.map(inc, range(4))
        ys = c.map(add, xs, [10, xs[0], 20, 5])
        assert await c.gather(ys) == [1 + 10, 2 + 1, 3 + 20, 4 + 5]
        sums = c.map(sum, [[xs[0], xs[1]], [5, xs[2]]], pure=False)
        assert await c.gather(sums) == [1 + 2, 5 + 3]
        # rows mixing plain values and futures; a future among the keyword arguments
        zs = c.map(add, [1, xs[3]], offset=xs[2])
        assert await c.gather(zs) == [1 + 3, 4 + 3]
        assert {d.key for d in s.tasks[zs[0].key].dependencies} == {xs[2].key}
        assert {d.key for d in s.tasks[zs[1].key].dependencies} == {xs[2].key, xs[3].key}
        assert c.map(inc, []) == []

    run(body)


def test_map_keys_pure_impure_named_and_given() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        a, b = c.map(inc, range(3)), c.map(inc, range(3))
        assert [f.key for f in a] == [f.key for f in b] and len({f.key for f in a}) == 3
        x = c.map(inc, range(3), pure=False)
        y = c.map(inc, range(3), pure=False, key="step")
        assert len({f.key for f in x + y}) == 6
        assert all(f.key.startswith("inc-") for f in x)
        assert all(f.key.startswith("step-") for f in y)
        given = c.map(inc, range(2), key=["first", ("second", 1)])
        assert [f.key for f in given] == ["first", ("second", 1)]
        assert await c.gather(a + x + y + given) == [1, 2, 3] * 3 + [1, 2]
        assert {s.tasks[f.key].group.name for f in x} == {"inc"}
        with pytest.raises(ValueError, match="3 keys given for 2 tasks"):
            c.map(inc, range(2), key=["a", "b", "c"])

    run(body)


@pytest.fixture
def chunks_of_4(monkeypatch: pytest.MonkeyPatch) -> None:
    """``map`` sends its rows four at a time."""
    monkeypatch.setattr(graph_module, "MAP_CHUNK", 4)


@pytest.mark.usefixtures("chunks_of_4")
def test_map_reads_its_iterables_a_chunk_at_a_time() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        read: list[int] = []

        def rows(n: int):  # type: ignore[no-untyped-def]
            for i in range(n):
                read.append(i)
                yield i

        pure = c.map(inc, rows(10))  # three chunks, keys by content
        assert len(read) == 10 and len({f.key for f in pure}) == 10
        assert [f.key for f in pure] == [c.submit(inc, i).key for i in range(10)]
        unique = c.map(add, rows(9), range(100), pure=False)  # zip stops at the shortest
        assert [f.key.rsplit("-", 1)[1] for f in unique] == [str(i) for i in range(9)]
        assert await c.gather(pure + unique) == [*range(1, 11), *range(0, 18, 2)]
        assert {s.tasks[f.key].group.name for f in pure + unique} == {"inc", "add"}
        assert c.map(inc, iter(())) == []

    run(body)


@pytest.mark.usefixtures("chunks_of_4")
def test_a_map_whose_iterable_fails_part_way_releases_what_it_sent() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        def rows():  # type: ignore[no-untyped-def]
            yield from range(6)  # one chunk goes out before the failure
            raise ValueError("bad row")

        with pytest.raises(ValueError, match="bad row") as failure:
            c.map(inc, rows(), pure=False)
        assert failure.traceback  # kept: it holds the map's frame, and its locals
        assert not c.futures
        await until(lambda: not s.tasks, what="the scheduler forgets the sent chunk")
        assert await c.submit(inc, 1) == 2

    run(body)


def test_map_and_submit_give_a_call_the_same_content_key() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        rows = [1, 2.5, "s", b"b", None, True, (1, 2), [3, 4]]  # plain ones hash fast
        mapped = c.map(add, rows, [0] * len(rows), offset=1)
        assert [f.key for f in mapped] == [c.submit(add, r, 0, offset=1).key for r in rows]
        assert len({f.key for f in mapped}) == len(rows)  # 1 and True differ, too
        assert c.map(add, [1], [0], offset=2)[0].key != mapped[0].key
        assert c.map(operator.add, [1], [0])[0].key != c.map(add, [1], [0])[0].key
        assert await c.submit(inc, 41) == 42
        assert await c.gather(mapped[:2]) == [2, 3.5]
        assert {s.tasks[f.key].group.name for f in mapped} == {"add"}  # claimed, checked

    run(body)


def test_map_failures_stay_with_their_rows() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        fs = c.map(operator.truediv, [1, 2, 3], [1, 0, 3])
        assert await fs[0] == 1.0 and await fs[2] == 1.0
        with pytest.raises(ZeroDivisionError):
            await fs[1]
        assert fs[1].status == "error"

    run(body)


def test_map_options_apply_to_every_task() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        target = workers[1].address
        fs = c.map(inc, range(12), workers=[target], pure=False)
        assert await c.gather(fs) == list(range(1, 13))
        assert all({ws.address for ws in s.tasks[f.key].who_has} == {target} for f in fs)

    run(body)


def test_pure_submissions_share_a_key_and_impure_ones_do_not() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        a, b = c.submit(inc, 1), c.submit(inc, 1)
        assert a.key == b.key
        x, y = c.submit(inc, 1, pure=False), c.submit(inc, 1, pure=False)
        assert x.key != y.key
        k = c.submit(inc, 1, key="my-key")
        assert k.key == "my-key" and await k == 2

    run(body)


def test_futures_as_arguments_in_containers() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        xs = c.map(inc, range(4))
        total = c.submit(sum, xs)
        assert await total == 10
        d = c.submit(lambda m: m["a"] + m["b"][0], {"a": xs[0], "b": [xs[1]]})
        assert await d == 1 + 2

    run(body)


def test_gather_nested_structures() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        a, b, e = c.submit(inc, 1), c.submit(inc, 2), c.submit(inc, 3)
        out = await c.gather({"x": [a, (b, 7)], "y": {e}})
        assert out == {"x": [2, (3, 7)], "y": {4}}

    run(body)


def test_errors_raise_with_type_message_and_remote_traceback() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        bad = c.submit(fail, 3)
        with pytest.raises(ZeroDivisionError, match="cannot divide 3") as info:
            await bad
        frames = traceback.extract_tb(info.value.__traceback__)
        assert any(f.name == "fail" for f in frames), frames
        assert bad.status == "error"
        exc = await bad.exception()
        assert isinstance(exc, ZeroDivisionError)
        tb = await bad.traceback()
        assert any(f.name == "fail" for f in traceback.extract_tb(tb))
        # the cluster is healthy afterwards, and dependents carry the original error
        dep = c.submit(inc, bad)
        with pytest.raises(ZeroDivisionError):
            await dep
        assert await c.submit(inc, 1) == 2

    run(body)


def test_gather_errors_skip() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        good, bad = c.submit(inc, 1), c.submit(fail, 1)
        assert await c.gather([good, bad], errors="skip") == [2]
        with pytest.raises(ZeroDivisionError):
            await c.gather([good, bad])

    run(body)


def test_scatter_and_broadcast() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        [x] = await c.scatter([41])
        assert await c.submit(inc, x) == 42
        single = await c.scatter(5)
        assert isinstance(single, Future) and await single == 5
        both = await c.scatter({"k": 1}, broadcast=True)
        assert len(s.tasks["k"].who_has) == len(workers)
        assert await both["k"] == 1

    run(body)


def test_dependencies_move_between_workers() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        a_addr, b_addr = workers[0].address, workers[1].address
        a = c.submit(lambda: list(range(1000)), workers=[a_addr])
        b = c.submit(sum, a, workers=[b_addr])
        assert await b == sum(range(1000))
        assert s.tasks[a.key].who_has >= {s.workers[a_addr], s.workers[b_addr]}

    run(body)


def test_released_futures_are_forgotten_by_the_scheduler() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        fs = c.map(inc, range(20))
        total = c.submit(sum, fs)
        assert await total == sum(range(1, 21))
        del fs
        total.release()
        await until(lambda: not s.tasks, what="scheduler forgets released keys")
        await until(lambda: not any(w.data for w in workers), what="workers drop data")

    run(body)


def test_cancel() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        ev = c.submit(lambda: __import__("time").sleep(0.5), pure=False)
        await c.cancel([ev])
        assert ev.cancelled()
        with pytest.raises(CancelledError):
            await ev
        assert await c.submit(inc, 1) == 2

    run(body)


def test_as_completed_and_wait() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        fs = c.map(inc, range(10))
        seen = [f async for f in as_completed(fs)]
        assert sorted(f.key for f in seen) == sorted(f.key for f in fs)
        done, not_done = await wait(fs)
        assert len(done) == 10 and not not_done

    run(body)


def test_add_done_callback_runs_once_done() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        called: asyncio.Future[str] = loop.create_future()
        fut = c.submit(inc, 1)
        fut.add_done_callback(lambda f: loop.call_soon_threadsafe(called.set_result, f.key))
        assert await asyncio.wait_for(called, 5) == fut.key

    run(body)


def test_dependency_chain_and_task_duration_learned() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        x = c.submit(inc, 0)
        for _ in range(20):
            x = c.submit(inc, x)
        assert await x == 21
        assert "inc" in s.task_duration
        story = s.story(x.key)
        assert [e[2] for e in story][:2] == ["waiting", "processing"]

    run(body)


def test_losing_a_worker_recomputes_its_results() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        w0, w1 = workers
        a = c.submit(inc, 1, workers=[w0.address], allow_other_workers=True)
        assert await a == 2
        await w0.close()
        await until(lambda: w0.address not in s.workers, what="worker removed")
        b = c.submit(operator.add, a, 10)
        assert await b == 12
        assert s.tasks[a.key].who_has == {s.workers[w1.address]}

    run(body)


def test_scheduler_attributes() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        await c.submit(inc, 1)
        assert set(s.workers) == {w.address for w in workers}
        assert len(s.clients) == 1 and c.id in s.client_comms
        assert set(s.stream_comms) == set(s.workers)
        assert set(s.idle) == set(s.workers)
        assert not s.saturated and not s.unrunnable
        assert s.host_info["127.0.0.1"]["nthreads"] == 2
        assert s.services == {} and s.loop is asyncio.get_running_loop()
        info = await c.scheduler_info()
        assert set(info["workers"]) == set(s.workers)

    run(body)


def test_small_results_ride_along_and_large_ones_are_fetched() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        assert await c.submit(inc, 1) == 2
        assert c.pool is not None and not c.pool._peers  # no connection to a worker
        big = await c.submit(lambda n: b"x" * n, 100_000)
        assert big == b"x" * 100_000
        assert len(c.pool._peers) == 1  # fetched straight from the worker holding it

    run(body)


def test_shared_blobs_are_sent_once_and_dropped_with_their_tasks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(graph_module, "MAP_CHUNK", 20)

    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        fs = c.map(inc, range(50))
        assert await c.gather(fs) == list(range(1, 51))
        blobs = s.state.functions
        chunks = {b for b, blob in blobs.items() if blob.requires is not None}
        (fid,) = set(blobs) - chunks  # one function for fifty tasks ...
        assert len(chunks) == 3  # ... whose arguments travel in chunks of 20
        assert blobs[fid].refs == 3 and sorted(blobs[c].refs for c in chunks) == [10, 20, 20]
        for w in workers:
            if w.data:  # the function, and the chunks of the tasks it ran
                assert fid in w.functions._blobs and set(w.functions._blobs) <= set(blobs)
        del fs
        await until(lambda: not s.tasks, what="scheduler forgets the map")
        assert not s.state.functions
        await until(lambda: all(len(w.functions) == 0 for w in workers), what="workers drop it")

    run(body)


def test_graph_nodes_travel_in_shared_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graph_module, "GRAPH_CHUNK", 10)
    dsk: dict[object, object] = {("x", i): (inc, i) for i in range(25)}
    dsk["total"] = (sum, list(dsk))
    msgs, blobs = graph_messages(dsk, ["total"])
    assert len(msgs) == 26 and len(blobs) == 3  # chunks of 10 in priority order
    assert {m["fn"] for m in msgs} == set(blobs)
    assert [m["spec"] for m in msgs[:12]] == [*range(10), 0, 1]

    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        assert await c.get(dsk, "total") == sum(range(1, 26))
        await until(lambda: not s.tasks and not s.state.functions, what="graph forgotten")
        await until(lambda: all(len(w.functions) == 0 for w in workers), what="chunks dropped")

    run(body)


def test_compute_and_persist_from_an_asynchronous_client() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        x = da.arange(20, chunks=5)
        fut = c.compute(x.sum())
        assert await fut == 190
        assert await c.compute([x.max(), x.min()], sync=True) == [19, 0]
        y = c.persist(x + 1)
        assert len(futures_of(y)) == 4
        assert await c.compute(y.sum(), sync=True) == 210
        with pytest.raises(NotImplementedError, match="actor=True"):
            c.compute(x.sum(), actors=True)

    run(body)
