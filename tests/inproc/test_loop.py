"""LoopRunner: the shared background event loop thread for synchronous callers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator

import pytest
import uvloop

from conveyor.rpc.loop import LoopRunner, new_event_loop


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "conveyor-loop"]


@pytest.fixture
def runner() -> Iterator[LoopRunner]:
    before = set(threading.enumerate())
    r = LoopRunner.acquire()
    try:
        yield r
    finally:
        r.release()
    assert set(threading.enumerate()) <= before


def test_acquire_shares_one_thread_until_last_release() -> None:
    before = set(threading.enumerate())
    a = LoopRunner.acquire()
    b = LoopRunner.acquire()
    try:
        assert a is b
        assert a.loop is b.loop
        assert len(loop_threads()) == 1
        assert loop_threads()[0].daemon
    finally:
        a.release()
    # one user is left: the loop still runs
    assert b.run_sync(asyncio.sleep, 0, "still running") == "still running"
    b.release()
    assert loop_threads() == []
    assert set(threading.enumerate()) <= before
    assert not b.is_running


def test_acquire_after_last_release_starts_a_new_loop() -> None:
    first = LoopRunner.acquire()
    first_loop = first.loop
    first.release()
    second = LoopRunner.acquire()
    try:
        assert second.loop is not first_loop
        assert second.run_sync(asyncio.sleep, 0, 7) == 7
    finally:
        second.release()
    assert first_loop.is_closed()
    assert loop_threads() == []


def test_release_without_acquire_raises() -> None:
    with pytest.raises(RuntimeError, match="not acquired"):
        LoopRunner().release()
    r = LoopRunner.acquire()
    r.release()
    with pytest.raises(RuntimeError, match="not acquired"):
        r.release()


def test_loop_is_uvloop() -> None:
    assert isinstance(new_event_loop(), uvloop.Loop)
    with LoopRunner() as r:
        assert isinstance(r.loop, uvloop.Loop)


def test_run_sync_returns_result_and_forwards_arguments(runner: LoopRunner) -> None:
    async def add(a: int, b: int, *, scale: int = 1) -> tuple[int, bool]:
        return (a + b) * scale, threading.current_thread() is loop_threads()[0]

    assert runner.run_sync(add, 1, 2, scale=10) == (30, True)


def test_run_sync_accepts_a_function_returning_an_awaitable(runner: LoopRunner) -> None:
    def make() -> asyncio.Future[str]:
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        fut.set_result("done")
        return fut

    assert runner.run_sync(make) == "done"


def test_run_sync_reraises_the_exception(runner: LoopRunner) -> None:
    class Boom(Exception):
        pass

    async def fail() -> None:
        await asyncio.sleep(0)
        raise Boom("bad thing")

    with pytest.raises(Boom, match="bad thing"):
        runner.run_sync(fail)
    # the loop survives an exception
    assert runner.run_sync(asyncio.sleep, 0, 1) == 1


def test_run_sync_timeout_cancels_the_coroutine(runner: LoopRunner) -> None:
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError, match=r"did not finish within 0\.05 seconds"):
        runner.run_sync(slow, timeout=0.05)
    assert cancelled.wait(5)


def test_run_sync_passes_through_a_timeout_raised_by_the_coroutine(runner: LoopRunner) -> None:
    async def times_out() -> None:
        raise TimeoutError("inner")

    with pytest.raises(TimeoutError, match="inner"):
        runner.run_sync(times_out, timeout=10)


def test_run_sync_from_the_loop_thread_raises(runner: LoopRunner) -> None:
    async def reenter() -> None:
        runner.run_sync(asyncio.sleep, 0)

    with pytest.raises(RuntimeError, match="event loop's own thread"):
        runner.run_sync(reenter)


def test_loop_property_requires_a_started_runner() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = LoopRunner().loop


def test_stop_cancels_pending_tasks_and_closes_the_loop() -> None:
    cleaned_up = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned_up.set()

    async def spawn() -> asyncio.Task[None]:
        return asyncio.create_task(forever())

    r = LoopRunner()
    r.start()
    loop = r.loop
    r.run_sync(spawn)
    r.stop()
    assert cleaned_up.is_set()
    assert loop.is_closed()
    assert loop_threads() == []


def test_release_from_the_loop_thread_does_not_deadlock() -> None:
    r = LoopRunner.acquire()
    thread = loop_threads()[0]
    done = threading.Event()

    def release_inside() -> None:
        r.release()
        done.set()

    r.loop.call_soon_threadsafe(release_inside)
    assert done.wait(5)
    thread.join(5)
    assert not thread.is_alive()
    again = LoopRunner.acquire()
    try:
        assert again is not r
    finally:
        again.release()
    assert loop_threads() == []


class _Gone(asyncio.CancelledError):
    """An error that subclasses CancelledError, as a cancelled future's does."""


def test_run_sync_raises_cancelled_error_subclasses_with_their_message(
    runner: LoopRunner,
) -> None:
    async def fails() -> None:
        raise _Gone("the key was lost")

    with pytest.raises(_Gone, match="the key was lost"):
        runner.run_sync(fails)

    async def cancelled() -> None:
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        await asyncio.sleep(1)

    with pytest.raises(concurrent.futures.CancelledError):
        runner.run_sync(cancelled)
