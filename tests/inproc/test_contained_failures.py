"""Contained failures: a message whose handling raises closes only the connection that
sent it (one log line), the tick loop survives a failing iteration, and a task whose
outcome the worker could not handle fails instead of hanging its client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Client, Scheduler, Worker
from conveyor.core import events as se
from conveyor.core import worker as worker_core
from conveyor.core import worker_events as we
from conveyor.rpc import RemoteError
from conveyor.testing.cluster import in_process_cluster, until


def inc(x: int) -> int:
    return x + 1


def _fails_once(handler: Callable[..., Any], failed: list[str]) -> Callable[..., Any]:
    """``handler``, except that its first call raises (and says so in ``failed``)."""

    def once(*args: Any) -> Any:
        if not failed:
            failed.append("raised")
            raise RuntimeError("injected")
        return handler(*args)

    return once


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# ------------------------------------------------------------------- tick loop


def test_worker_ttl_works_on_after_a_tick_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with Scheduler(host="127.0.0.1", port=0, worker_ttl="0.5s") as s:
            failed: list[str] = []
            s.state._handlers[se.Tick] = _fails_once(s.state._handlers[se.Tick], failed)
            async with Worker(s.address, nthreads=1, heartbeat_interval="1h") as quiet:
                await until(lambda: bool(failed), what="a tick raised")
                await until(lambda: quiet.address in s.workers, what="registered")
                await until(lambda: quiet.address not in s.workers, 10, "removed by ttl")

    with caplog.at_level(logging.ERROR, logger="conveyor"):
        asyncio.run(main())
    assert _errors(caplog) == ["Scheduler tick failed: Tick failed: RuntimeError: injected"]


def test_idle_timeout_works_on_after_its_steps_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with Scheduler(host="127.0.0.1", port=0, idle_timeout="0.3s") as s:
            collector: list[str] = []
            idle_check: list[str] = []
            s._gc.tick = _fails_once(s._gc.tick, collector)  # type: ignore[method-assign]
            s._check_idle = _fails_once(s._check_idle, idle_check)  # type: ignore[method-assign]
            await asyncio.wait_for(s.finished(), 10)
            assert s.status == "closed"
            assert collector and idle_check

    with caplog.at_level(logging.ERROR, logger="conveyor"):
        asyncio.run(main())
    assert sorted(_errors(caplog)) == [
        "Scheduler collector tick failed: RuntimeError: injected",
        "Scheduler idle check failed: RuntimeError: injected",
    ]


# ----------------------------------------------------------- peers' messages


def test_worker_message_that_breaks_the_state_closes_only_that_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=2) as (s, (w0, w1), c):
            heartbeat = s.state._handlers[se.WorkerHeartbeat]

            def broken(e: se.WorkerHeartbeat) -> None:
                if e.address == w0.address:
                    raise RuntimeError("injected")
                heartbeat(e)

            s.state._handlers[se.WorkerHeartbeat] = broken
            with caplog.at_level(logging.WARNING, logger="conveyor"):
                assert w0.scheduler is not None
                w0.scheduler.send({"op": "heartbeat-worker", "metrics": {}})
                await asyncio.wait_for(w0.finished(), 10)  # its connection was closed
                await until(lambda: w0.address not in s.workers, what="w0 removed")
            assert list(s.workers) == [w1.address]
            assert await c.submit(inc, 1) == 2
            closing = [m for m in _errors(caplog) if m.startswith("Closing")]
            assert len(closing) == 1, closing
            assert "'heartbeat-worker'" in closing[0]
            assert "WorkerHeartbeat failed: RuntimeError: injected" in closing[0]

    asyncio.run(main())


@pytest.mark.parametrize("fault", ["state machine raises", "malformed message"])
def test_client_message_that_fails_closes_only_that_client(
    fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with (
            in_process_cluster(n_workers=1) as (s, _workers, c),
            Client(s.address, asynchronous=True, set_as_default=False) as bad,
        ):
            desires = s.state._handlers[se.ClientDesiresKeys]

            def broken(e: se.ClientDesiresKeys) -> None:
                if e.client_id == bad.id:
                    raise RuntimeError("injected")
                desires(e)

            s.state._handlers[se.ClientDesiresKeys] = broken
            keys: list[Any] = ["x"] if fault == "state machine raises" else [{"a": "map"}]
            old = bad.scheduler
            assert old is not None
            with caplog.at_level(logging.WARNING, logger="conveyor"):
                old.send({"op": "client-desires-keys", "keys": keys})
                # the scheduler closed that connection; the client connects again
                await until(lambda: old.closed, what="connection closed")
                await until(
                    lambda: bad.scheduler is not old and bad.status == "running",
                    what="the client reconnected",
                )
            assert sorted(s.clients) == sorted([c.id, bad.id])
            assert await c.submit(inc, 1) == 2
            assert await bad.submit(inc, 2) == 3
        lines = [r for r in caplog.records if r.getMessage().startswith("Closing <Peer")]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert "'client-desires-keys'" in lines[0].getMessage()
        if fault == "malformed message":  # refused whole by the decoder: a warning
            assert lines[0].levelno == logging.WARNING
            assert "malformed" in lines[0].getMessage()
        else:
            assert lines[0].levelno == logging.ERROR
            assert "ClientDesiresKeys failed: RuntimeError: injected" in lines[0].getMessage()

    asyncio.run(main())


def test_failing_request_is_answered_and_the_connection_stays() -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=1) as (s, _workers, c):
            assert c.scheduler is not None
            with pytest.raises(RemoteError, match="KeyError"):
                await c.scheduler.request({"op": "story"})  # no "keys"
            assert not c.scheduler.closed and c.id in s.clients
            assert await c.submit(inc, 1) == 2

    asyncio.run(main())


def test_scheduler_message_that_breaks_a_worker_closes_it_and_work_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=2) as (s, (w0, w1), c):
            compute = worker_core._HANDLERS[we.ComputeTaskEvent]

            def broken(state: Any, e: we.ComputeTaskEvent) -> None:
                if state is w0.state:
                    raise RuntimeError("injected")
                compute(state, e)

            monkeypatch.setitem(worker_core._HANDLERS, we.ComputeTaskEvent, broken)
            with caplog.at_level(logging.ERROR, logger="conveyor"):
                future = c.submit(inc, 1, workers=[w0.address], allow_other_workers=True)
                await asyncio.wait_for(w0.finished(), 10)  # its scheduler connection closed
            assert await future == 2  # rescheduled on w1
            assert list(s.workers) == [w1.address]
            errors = _errors(caplog)
            assert len(errors) == 1, errors
            assert "after 'compute-task' failed: RuntimeError: injected" in errors[0]

    asyncio.run(main())


# ---------------------------------------------------------------- task runner


@pytest.mark.parametrize("fault", ["storing the result", "state machine"])
def test_task_whose_outcome_cannot_be_handled_fails_its_client(
    fault: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=1) as (s, (w,), c):
            if fault == "storing the result":
                put = w.data.put

                def refusing(key: Any, value: Any, weight: int) -> None:
                    if key == "bad":  # the worker cannot store this result
                        raise OSError("no room for it")
                    put(key, value, weight)

                monkeypatch.setattr(w.data, "put", refusing)
            else:
                success = worker_core._HANDLERS[we.ExecuteSuccess]

                def broken(state: Any, e: we.ExecuteSuccess) -> None:
                    if e.key == "bad":
                        raise RuntimeError("injected")
                    success(state, e)

                monkeypatch.setitem(worker_core._HANDLERS, we.ExecuteSuccess, broken)
            expected = "could not handle the outcome"
            with (
                caplog.at_level(logging.ERROR, logger="conveyor"),
                pytest.raises(RuntimeError, match=expected) as info,
            ):
                await asyncio.wait_for(c.submit(inc, 1, key="bad"), 10)
            text = "OSError: no room for it" if fault == "storing the result" else "injected"
            assert text in str(info.value)
            assert s.tasks["bad"].state == "erred"
            assert await c.submit(inc, 2) == 3  # the worker runs on
        errors = _errors(caplog)
        assert len(errors) == 1 and "Handling the outcome of task 'bad'" in errors[0]

    asyncio.run(main())
