"""Every SchedulerPlugin hook is called, and hooks no plugin implements cost nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from conveyor import Scheduler, SchedulerPlugin
from conveyor.core.records import WorkerInfo
from conveyor.testing.cluster import in_process_cluster


def inc(x: int) -> int:
    return x + 1


class Recorder(SchedulerPlugin):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def update_graph(
        self, scheduler: Any, *, client: str, keys: list[Any], tasks: list[Any]
    ) -> None:
        self.calls.append(("update_graph", client, sorted(keys), sorted(tasks)))

    def transition(self, key: Any, start: str, finish: str, *, stimulus_id: str) -> None:
        self.calls.append(("transition", key, start, finish))

    def restart(self, scheduler: Any) -> None:
        self.calls.append(("restart",))

    def before_close(self) -> None:
        self.calls.append(("before_close",))

    def valid_workers_downscaling(
        self, scheduler: Any, workers: list[WorkerInfo]
    ) -> list[WorkerInfo]:
        return [ws for ws in workers if ws.name != "w0"]  # w0 must stay


def test_scheduler_plugin_hooks_are_called() -> None:
    rec = Recorder()

    async def main() -> None:
        async with in_process_cluster(n_workers=2, scheduler_kwargs={"plugins": [rec]}) as (
            s,
            _,
            c,
        ):
            assert s.state.transition_hook is not None
            x = c.submit(inc, 1, key="inc-x")
            assert await x == 2
            assert ("update_graph", c.id, ["inc-x"], ["inc-x"]) in rec.calls
            moves = [call[2:] for call in rec.calls if call[:2] == ("transition", "inc-x")]
            assert ("waiting", "processing") in moves and ("processing", "memory") in moves
            assert s.workers_to_close(n=2, attribute="name") == ["w1"]  # w0 kept by the plugin
            s.extensions["control"].restart(None, {})  # the scheduler's part of restart()
            assert ("restart",) in rec.calls
            assert await c.submit(inc, 2) == 3  # the datasets extension's hook ran too
            await s.remove_plugin("Recorder")
            assert s.state.transition_hook is None  # nobody listens: transitions cost nothing
            await s.add_plugin(rec)

    asyncio.run(main())
    assert rec.calls[-1] == ("before_close",)


def test_plugins_without_a_transition_hook_leave_transitions_alone() -> None:
    class Quiet(SchedulerPlugin):
        def add_worker(self, scheduler: Any, worker: str) -> None:
            pass

    s = Scheduler(port=0, dashboard=False, plugins=[Quiet()])
    assert s.state.transition_hook is None
