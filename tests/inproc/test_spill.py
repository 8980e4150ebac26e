"""The worker's data store: least recently used values spill to disk off the event
loop, come back when read, and leave no file behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dask.config
import numpy as np
import pytest

from conveyor import Client, Future
from conveyor.server.spill import SpillBuffer, check_compression
from conveyor.server.worker import Worker
from conveyor.testing.cluster import in_process_cluster, until


def sized(key: Any, value: Any) -> int:
    return int(value.nbytes) if isinstance(value, np.ndarray) else 100


def files(buf: SpillBuffer) -> list[str]:
    return sorted(os.listdir(buf.directory)) if buf.slow or buf._directory else []


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_values_over_target_spill_least_recently_used_first(
    tmp_path: Path, compression: str | None
) -> None:
    async def main() -> None:
        buf = SpillBuffer(2500, sized, str(tmp_path), compression)
        arrays = {f"a{i}": np.full(125, i, dtype="f8") for i in range(4)}  # 1000 B each
        for key in ("a0", "a1"):
            buf[key] = arrays[key]
        assert buf["a0"] is arrays["a0"]  # a0 used last: a1 is the oldest now
        buf["a2"] = arrays["a2"]
        buf.put("a3", arrays["a3"], 1000)
        await until(lambda: buf.fast_bytes <= 2500, what="spilled")
        # use order: a1, a0, a2, a3: the first two leave memory
        assert set(buf.slow) == {"a1", "a0"} and set(buf.fast) == {"a2", "a3"}
        assert len(buf) == 4 and set(buf) == set(arrays)
        spilled = len(files(buf))
        assert spilled == len(buf.slow) and buf.spilled_count == spilled
        # read back: equal values, back in memory, its file gone
        np.testing.assert_array_equal(buf["a1"], arrays["a1"])
        assert "a1" in buf.fast and "a1" not in buf.slow
        await until(lambda: buf.fast_bytes <= 2500, what="spilled again")
        assert set(buf.slow) == {"a0", "a2"}  # a2 was the least recently used in memory
        await buf.load(["a0"])  # read in the helper thread
        np.testing.assert_array_equal(buf.fast["a0"], arrays["a0"])
        del buf["a2"]
        buf.discard("a3")
        assert "a2" not in buf and "a3" not in buf
        directory = buf.directory
        buf.close()
        assert not os.path.exists(directory) and len(buf) == 0

    asyncio.run(main())


def test_writes_happen_off_the_event_loop(tmp_path: Path, monkeypatch: Any) -> None:
    from conveyor.server import spill

    writers: list[str] = []
    write = spill._write

    def recording(*args: Any) -> int:
        writers.append(threading.current_thread().name)
        return write(*args)

    monkeypatch.setattr(spill, "_write", recording)

    async def main() -> None:
        buf = SpillBuffer(0, sized, str(tmp_path))
        buf["x"] = np.zeros(10)
        await until(lambda: "x" in buf.slow, what="spilled")
        assert writers and all(name.startswith("conveyor-spill") for name in writers)
        buf.close()

    asyncio.run(main())


def test_a_value_replaced_while_being_written_is_not_lost(tmp_path: Path) -> None:
    async def main() -> None:
        buf = SpillBuffer(0, sized, str(tmp_path))
        buf["x"] = np.zeros(10)
        buf["x"] = np.ones(10)  # while the first write may be under way
        await until(lambda: "x" in buf.slow and not buf.fast, what="spilled")
        np.testing.assert_array_equal(buf["x"], np.ones(10))
        assert len(os.listdir(buf.directory)) == 0  # read back: no stale file left
        buf.close()

    asyncio.run(main())


def test_an_unpicklable_value_stays_in_memory(tmp_path: Path) -> None:
    async def main() -> None:
        buf = SpillBuffer(0, sized, str(tmp_path))
        lock = threading.Lock()
        buf["lock"] = lock
        buf["x"] = np.zeros(10)
        await until(lambda: "x" in buf.slow, what="the other value spilled")
        assert buf["lock"] is lock and "lock" in buf.fast
        buf.close()

    asyncio.run(main())


def test_compression_is_checked() -> None:
    assert check_compression(None) is None and check_compression("zlib") == "zlib"
    with pytest.raises(ValueError, match="spill-compression"):
        check_compression("snappy")


#: spill by managed bytes only: the process's memory is the test runner's, not the worker's
SETTINGS = {
    "conveyor.worker.memory.target": 0.5,
    "conveyor.worker.memory.spill": False,
    "conveyor.worker.memory.pause": False,
}


def test_a_worker_spills_computes_from_spilled_data_and_serves_it(tmp_path: Path) -> None:
    settings = SETTINGS

    async def main() -> None:
        with dask.config.set(settings):
            async with in_process_cluster(
                n_workers=1, worker_kwargs={"memory_limit": "8MB", "local_directory": str(tmp_path)}
            ) as (_s, [w], c):
                parts = c.map(np.full, [125_000] * 12, range(12), pure=False)  # 1 MB each
                await c.gather(parts)
                await until(lambda: w.data.fast_bytes <= 4_000_000, what="spilled")
                assert len(w.data.slow) >= 8 and w.data.spilled_bytes >= 8_000_000
                directory = w.data.directory
                assert len(os.listdir(directory)) == len(w.data.slow)
                total = c.submit(lambda *xs: sum(float(x.sum()) for x in xs), *parts)
                assert await total == sum(125_000.0 * i for i in range(12))
                back = await c.gather(parts)  # served from disk through get-data
                assert [float(x[0]) for x in back] == [float(i) for i in range(12)]
            assert not os.path.exists(directory)  # removed with the worker

    asyncio.run(main())


@contextlib.asynccontextmanager
async def one_spilling_worker(
    tmp_path: Path, n: int
) -> AsyncIterator[tuple[Worker, Client, list[Future]]]:
    """A one-thread worker with an 8 MB limit holding ``n`` arrays of 1 MB (most of them
    spilled soon after)."""
    async with in_process_cluster(
        n_workers=1,
        nthreads=1,
        worker_kwargs={"memory_limit": "8MB", "local_directory": str(tmp_path)},
    ) as (_s, [w], c):
        parts = c.map(np.full, [125_000] * n, range(n), pure=False)
        await c.gather(parts)
        yield w, c, parts


def test_prefetched_tasks_read_back_at_most_one_more_input_set_than_threads(
    tmp_path: Path,
) -> None:
    """Tasks handed to the threads ahead of time do not all read their spilled inputs
    back at once: at most nthreads + 1 hold inputs read back for them."""

    async def main() -> None:
        async with one_spilling_worker(tmp_path, 16) as (w, c, parts):
            await until(lambda: len(w.data.slow) >= 10, what="spilled")
            most = 0
            real_load = w.data.load

            async def load(keys: Any) -> None:
                nonlocal most
                most = max(most, len(w._unspilled))
                await real_load(keys)

            w.data.load = load  # type: ignore[method-assign]
            sums = c.map(total, parts)  # known to be short: prefetched
            assert await c.gather(sums) == [125_000.0 * i for i in range(16)]
            assert 1 <= most <= w.nthreads + 1
            assert not w._unspilled  # every slot given back

    short = {"conveyor.scheduler.default-task-durations": {"total": 0.0001}}
    with dask.config.set({**SETTINGS, **short}):
        asyncio.run(main())


def total(x: np.ndarray) -> float:
    return float(x.sum())


def test_a_task_cancelled_while_it_waits_to_read_back_frees_its_thread(tmp_path: Path) -> None:
    async def main() -> None:
        async with one_spilling_worker(tmp_path, 12) as (w, c, parts):
            await until(lambda: parts[0].key in w.data.slow, what="spilled")
            slots = w._unspill_slots
            assert slots is not None
            for _ in range(w.nthreads + 1):  # every slot taken: the task must wait
                await slots.acquire()
            y = c.submit(lambda x: float(x.sum()), parts[0])
            assert w.state is not None
            await until(lambda: y.key in w.state.executing_keys, what="started")
            await c.cancel(y)
            await until(
                lambda: (
                    w.state.tasks.get(y.key) is None or w.state.tasks[y.key].state == "cancelled"
                ),
                what="cancelled",
            )
            for _ in range(w.nthreads + 1):
                slots.release()
            await until(lambda: y.key not in w.state.executing_keys, what="thread freed")
            z = c.submit(lambda x: float(x.sum()), parts[1])
            assert await z == 125_000.0

    with dask.config.set(SETTINGS):
        asyncio.run(main())
