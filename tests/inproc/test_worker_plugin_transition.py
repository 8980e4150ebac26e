"""``WorkerPlugin.transition``: a worker tells its plugins of every task state change;
with no plugin listening, its state machine calls nothing."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from conveyor import WorkerPlugin
from conveyor.server.worker import Worker
from conveyor.testing.cluster import in_process_cluster, until


def inc(x: int) -> int:
    return x + 1


def fail(x: int) -> int:
    raise ValueError(f"bad {x}")


class Moves(WorkerPlugin):
    """Records every transition it is told of."""

    name = "moves"

    def __init__(self) -> None:
        self.moves: list[tuple[Any, str, str]] = []
        self.kwargs: list[dict[str, Any]] = []

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        self.moves.append((key, start, finish))
        self.kwargs.append(kwargs)

    def of(self, key: str) -> list[tuple[str, str]]:
        return [(s, f) for k, s, f in self.moves if k == key]


class Broken(WorkerPlugin):
    name = "broken"

    def __init__(self) -> None:
        self.calls = 0

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        self.calls += 1
        raise RuntimeError("the plugin is broken")


class SetupOnly(WorkerPlugin):
    name = "setup-only"

    def setup(self, worker: Worker) -> None:
        pass


RAN = [("released", "ready"), ("ready", "executing")]


def test_registered_plugin_sees_a_task_through_to_memory_and_forgotten() -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=1) as (_, [w], c):
            assert w.state is not None and w.state.transition_hook is None
            await c.register_plugin(Moves())
            plugin = w.plugins["moves"]  # the worker's own copy
            assert w.state.transition_hook is not None
            x = c.submit(inc, 1, key="inc-x")
            y = c.submit(inc, x, key="inc-y")
            assert await y == 3
            assert plugin.of("inc-x") == [*RAN, ("executing", "memory")]
            # waiting for inc-x if it came before inc-x was done
            assert plugin.of("inc-y") in (
                [*RAN, ("executing", "memory")],
                [("released", "waiting"), ("waiting", "ready"), *RAN[1:], ("executing", "memory")],
            )
            # in the order the worker's own log has them
            assert [m for m in plugin.moves if m[0] in ("inc-x", "inc-y")] == [
                (k, s, f) for k, s, f, _ in w.state.log if k in ("inc-x", "inc-y")
            ]
            stamps = [kw["timestamp"] for kw in plugin.kwargs]
            assert all(isinstance(t, float) for t in stamps) and stamps == sorted(stamps)
            assert set().union(*plugin.kwargs) == {"timestamp"}
            del x, y
            await until(lambda: "inc-x" not in w.state.tasks, what="inc-x forgotten")
            assert plugin.of("inc-x")[-2:] == [("memory", "released"), ("released", "forgotten")]

            await c.unregister_worker_plugin("moves")
            assert w.state.transition_hook is None  # nobody listens: transitions cost nothing
            seen = len(plugin.moves)
            assert await c.submit(inc, 5) == 6
            assert len(plugin.moves) == seen

    asyncio.run(main())


def test_an_erring_task_ends_in_error() -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=1) as (_, [w], c):
            await c.register_plugin(Moves())
            plugin = w.plugins["moves"]
            bad = c.submit(fail, 1, key="fail-1")
            with pytest.raises(ValueError, match="bad 1"):
                await bad
            assert plugin.of("fail-1") == [*RAN, ("executing", "error")]

    asyncio.run(main())


def test_an_exception_in_the_hook_is_logged_once_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = Broken()
    moves = Moves()

    async def main() -> None:
        worker_kwargs = {"plugins": [broken, moves]}
        async with in_process_cluster(n_workers=1, worker_kwargs=worker_kwargs) as (_, [w], c):
            assert w.plugins == {"broken": broken, "moves": moves}
            futures = c.map(inc, range(5))
            assert await c.gather(futures) == [1, 2, 3, 4, 5]
            assert broken.calls >= 15  # called for every move, and raised each time
            for f in futures:  # the plugin after it was told of every one
                assert moves.of(f.key) == [*RAN, ("executing", "memory")]

    with caplog.at_level(logging.ERROR, logger="conveyor.worker"):
        asyncio.run(main())
    failures = [r for r in caplog.records if "failed in transition" in r.getMessage()]
    assert len(failures) == 1
    assert "'broken'" in failures[0].getMessage()
    assert failures[0].exc_info is not None
    assert "the plugin is broken" in str(failures[0].exc_info[1])


def test_plugins_without_a_transition_hook_leave_transitions_alone() -> None:
    async def main() -> None:
        worker_kwargs = {"plugins": [SetupOnly()]}
        async with in_process_cluster(n_workers=1, worker_kwargs=worker_kwargs) as (_, [w], c):
            assert "setup-only" in w.plugins
            assert w.state is not None and w.state.transition_hook is None
            assert await c.submit(inc, 1) == 2

    asyncio.run(main())


def test_worker_refuses_what_is_not_a_worker_plugin() -> None:
    with pytest.raises(TypeError, match="not a conveyor WorkerPlugin"):
        Worker("tcp://127.0.0.1:1", plugins=[object()])  # type: ignore[list-item]


def test_a_failing_setup_stops_the_worker_start() -> None:
    class BadSetup(WorkerPlugin):
        def setup(self, worker: Worker) -> None:
            raise OSError("no room")

    async def main() -> None:
        async with in_process_cluster(n_workers=0) as (s, _, _c):
            w = Worker(s.address, nthreads=1, plugins=[BadSetup()])
            with pytest.raises(OSError, match="no room"):
                await w.start()
            assert w.status == "closed" and not s.state.workers

    asyncio.run(main())
