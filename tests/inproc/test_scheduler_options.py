"""Scheduler keywords are honoured or refused: none is accepted and ignored."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from conveyor import Scheduler
from conveyor.testing.cluster import in_process_cluster


def test_features_conveyor_lacks_are_refused_with_what_is_missing() -> None:
    with pytest.raises(NotImplementedError, match="no TLS yet"):
        Scheduler(security=object())
    with pytest.raises(NotImplementedError, match="no extra HTTP services"):
        Scheduler(services={"bokeh": object})
    with pytest.raises(NotImplementedError, match="no extra HTTP services"):
        Scheduler(service_kwargs={"bokeh": {}})
    with pytest.raises(NotImplementedError, match="Jupyter"):
        Scheduler(jupyter=True)
    with pytest.raises(TypeError):
        Scheduler(no_such_option=1)  # type: ignore[call-arg]
    Scheduler(security=None, services={}, jupyter=False)  # the defaults are fine
    params = inspect.signature(Scheduler).parameters
    for name in ("loop", "blocked_handlers", "services", "security", "http_prefix", "preload"):
        assert name in params


def test_blocked_handlers_are_refused() -> None:
    async def main() -> None:
        kwargs = {"blocked_handlers": ["who-has"]}
        async with in_process_cluster(n_workers=1, scheduler_kwargs=kwargs) as (s, _, c):
            assert s.blocked_handlers == ["who-has"]
            with pytest.raises(Exception, match="'who-has' is blocked on this scheduler"):
                await c.who_has()
            assert await c.nthreads()  # the rest works

    asyncio.run(main())


def test_a_scheduler_runs_only_on_the_loop_it_was_given() -> None:
    other = asyncio.new_event_loop()
    try:
        s = Scheduler(port=0, dashboard=False, loop=other)

        async def main() -> None:
            with pytest.raises(RuntimeError, match="must be started on that loop"):
                await s.start()

        asyncio.run(main())

        async def on_it() -> None:
            async with s:
                assert s.loop is other

        other.run_until_complete(on_it())
    finally:
        other.close()
