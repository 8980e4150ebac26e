"""The worker's record of what its task threads run, read back as its nanny does."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

from conveyor.protocol import CallChunk, FunctionStore, dumps_function, dumps_spec
from conveyor.server.runner import TaskRunner
from conveyor.server.running_file import RunningFile, read_running


def test_slots_hold_the_running_keys_until_finished(tmp_path: Path) -> None:
    path = str(tmp_path / "running")
    record = RunningFile(path, 4)
    record.set_address("tcp://127.0.0.1:1234")
    a, b = record.claim(), record.claim()
    record.started(a, "x-1")
    record.started(b, ("y", 0, 2))
    assert read_running(path) == ("tcp://127.0.0.1:1234", ["x-1", ("y", 0, 2)])
    record.finished(a)
    assert read_running(path) == ("tcp://127.0.0.1:1234", [("y", 0, 2)])
    record.release(b)  # a thread that ends frees its slot
    assert read_running(path) == ("tcp://127.0.0.1:1234", [])


def test_a_key_too_long_or_a_thread_without_a_slot_makes_the_record_unknown(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "running")
    record = RunningFile(path, 1)
    slot = record.claim()
    assert record.claim() == -1  # none left
    record.started(slot, "k" * 1000)
    assert read_running(path) == ("", None)
    record = RunningFile(path, 1)  # a new worker process starts afresh
    assert read_running(path) == ("", [])
    record.started(-1, "x")
    assert read_running(path) == ("", None)


def test_a_missing_or_damaged_file_is_not_read_as_a_record(tmp_path: Path) -> None:
    path = tmp_path / "running"
    assert read_running(str(path)) is None
    path.write_bytes(b"garbage" * 100)
    assert read_running(str(path)) is None


def test_the_record_outlives_a_process_killed_by_its_task(tmp_path: Path) -> None:
    path = str(tmp_path / "running")
    script = (
        "import os, sys\n"
        "from conveyor.server.running_file import RunningFile\n"
        "r = RunningFile(sys.argv[1], 8)\n"
        "r.set_address('tcp://127.0.0.1:9')\n"
        "r.started(r.claim(), 'poison-1')\n"
        "os._exit(1)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, path], timeout=60)
    assert done.returncode == 1
    assert read_running(path) == ("tcp://127.0.0.1:9", ["poison-1"])


_RUNNING, _RELEASE = threading.Event(), threading.Event()


def blocking_task() -> int:
    _RUNNING.set()
    _RELEASE.wait(30)
    return 1


def test_the_runner_notes_a_task_while_it_runs(tmp_path: Path) -> None:
    path = str(tmp_path / "running")
    record = RunningFile(path, 8)
    running, release = _RUNNING, _RELEASE
    running.clear()
    release.clear()
    functions = FunctionStore()
    functions.add("f", dumps_function(blocking_task))
    functions.add("c", dumps_spec(CallChunk("f", [()], {}, False)))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[object] = loop.create_future()
        runner = TaskRunner(
            2, loop, functions, lambda k, o: done.set_result(o.value), record=record
        )
        try:
            runner.submit("t-1", ("c", 0), {})
            assert await asyncio.to_thread(running.wait, 30)
            assert read_running(path) == ("", ["t-1"])
            release.set()
            assert await asyncio.wait_for(done, 30) == 1
            assert read_running(path) == ("", [])
        finally:
            release.set()
            runner.close()
            for thread in list(runner.threads):
                await asyncio.to_thread(thread.join, 30)

    asyncio.run(main())
