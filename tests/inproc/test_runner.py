"""The worker's task threads: outcomes come back on the loop, in batches; close ends them."""

from __future__ import annotations

import asyncio
import operator
import sys
import threading
from typing import Any

import pytest

from conveyor.protocol import CallChunk, FunctionStore, dumps_function, dumps_spec
from conveyor.server.execute import Outcome
from conveyor.server.runner import TaskRunner


def _store(func: Any, rows: list[tuple[Any, ...]]) -> FunctionStore:
    functions = FunctionStore()
    functions.add("f", dumps_function(func))
    functions.add("c", dumps_spec(CallChunk("f", rows, {}, False)))
    return functions


_GATE = threading.Event()
_FAST_DONE = threading.Semaphore(0)


def slow_then_fast(x: int) -> int:
    """Task 0 waits for the gate; the others return at once (and say so)."""
    if x == 0:
        _GATE.wait(10)
    else:
        _FAST_DONE.release()
    return x * 10


def test_outcomes_return_on_the_loop_thread_several_per_wake_up() -> None:
    _GATE.clear()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: list[tuple[Any, Outcome, bool]] = []
        wakes = 0
        all_done = asyncio.Event()
        loop_thread = threading.get_ident()

        def on_done(key: Any, outcome: Outcome) -> None:
            got.append((key, outcome, threading.get_ident() == loop_thread))
            if len(got) == 50:
                all_done.set()

        runner = TaskRunner(2, loop, _store(slow_then_fast, [(i,) for i in range(50)]), on_done)
        drain = runner._drain

        def counting_drain() -> None:
            nonlocal wakes
            wakes += 1
            drain()

        runner._drain = counting_drain  # type: ignore[method-assign]
        for i in range(50):
            runner.submit(f"k-{i}", ("c", i), {})
        # block the loop (no await) while the other thread finishes tasks 1..49 and task 0
        # waits: their outcomes pile up for the loop to take together
        assert all(_FAST_DONE.acquire(timeout=10) for _ in range(49))
        _GATE.set()
        await asyncio.wait_for(all_done.wait(), 10)
        assert sorted(o.value for _, o, _ in got) == [i * 10 for i in range(50)]
        assert all(on_loop and o.ok for _, o, on_loop in got)
        assert wakes < 50  # outcomes that piled up came back together
        runner.close()
        for t in runner.threads:
            t.join(5)
        assert not any(t.is_alive() for t in runner.threads)
        with pytest.raises(RuntimeError, match="closed"):
            runner.submit("late", ("c", 0), {})

    asyncio.run(main())


def test_a_failing_task_comes_back_as_a_failed_outcome() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Outcome] = loop.create_future()
        runner = TaskRunner(
            1, loop, _store(operator.truediv, [(1, 0)]), lambda k, o: result.set_result(o)
        )
        runner.submit("k", ("c", 0), {})
        outcome = await asyncio.wait_for(result, 10)
        assert not outcome.ok and outcome.exception_text.startswith("ZeroDivisionError")
        runner.close()

    asyncio.run(main())


def test_a_task_calling_sys_exit_fails_and_the_thread_lives_on() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: asyncio.Queue[Outcome] = asyncio.Queue()
        runner = TaskRunner(1, loop, _store(sys.exit, [(3,)]), lambda k, o: got.put_nowait(o))
        runner.submit("k", ("c", 0), {})
        first = await asyncio.wait_for(got.get(), 10)
        assert not first.ok and first.exception_text.startswith("SystemExit")
        runner.submit("k2", ("c", 0), {})  # the same thread runs the next one
        assert not (await asyncio.wait_for(got.get(), 10)).ok
        assert all(t.is_alive() for t in runner.threads)
        runner.close()

    asyncio.run(main())


class BadSize:
    """A result whose size cannot be measured."""

    def __sizeof__(self) -> int:
        raise ValueError("no size")


def make_bad(x: int) -> BadSize:
    return BadSize()


def test_a_result_that_breaks_sizeof_fails_its_task_only() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: asyncio.Queue[Outcome] = asyncio.Queue()
        runner = TaskRunner(1, loop, _store(make_bad, [(1,)]), lambda k, o: got.put_nowait(o))
        runner.submit("k", ("c", 0), {})
        outcome = await asyncio.wait_for(got.get(), 10)
        assert not outcome.ok and "no size" in outcome.exception_text
        assert all(t.is_alive() for t in runner.threads)
        runner.close()

    asyncio.run(main())


def test_an_outcome_whose_handling_fails_does_not_strand_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        handled: list[Any] = []
        everything = asyncio.Event()

        def on_done(key: Any, outcome: Outcome) -> None:
            handled.append(key)
            if len(handled) == 20:
                everything.set()
            if key == "k-0":
                raise RuntimeError("handler bug")

        runner = TaskRunner(1, loop, _store(operator.neg, [(i,) for i in range(20)]), on_done)
        for i in range(20):
            runner.submit(f"k-{i}", ("c", i), {})
        await asyncio.wait_for(everything.wait(), 10)
        runner.close()

    asyncio.run(main())
    assert "Handling the outcome of task 'k-0' failed" in caplog.text
