"""Scheduler keywords are honoured or refused: none is accepted and ignored."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from conveyor import Scheduler
from conveyor.testing.cluster import in_process_cluster


def test_features_conveyor_lacks_are_refused_with_what_is_missing() -> None:
    with pytest.raises(TypeError, match=r"takes a conveyor\.Security"):
        Scheduler(security=object())  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError, match="Jupyter"):
        Scheduler(jupyter=True)
    with pytest.raises(TypeError):
        Scheduler(no_such_option=1)  # type: ignore[call-arg]
    Scheduler(security=None, services={}, jupyter=False)  # the defaults are fine
    params = inspect.signature(Scheduler).parameters
    for name in (
        "loop",
        "blocked_handlers",
        "services",
        "service_kwargs",
        "security",
        "http_prefix",
        "preload",
        "delete_interval",
        "synchronize_worker_interval",
    ):
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


def test_scheduler_retire_workers_refuses_what_it_would_ignore() -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=2) as (s, ws, _c):
            with pytest.raises(TypeError, match="not both"):
                await s.retire_workers([ws[0].address], n=1)
            with pytest.raises(TypeError):
                await s.retire_workers(bogus=1)  # type: ignore[call-arg]
            retired = await s.retire_workers(n=1, close_workers=False)
            assert len(retired) == 1 and len(s.workers) == 1

    asyncio.run(main())


@pytest.mark.parametrize(
    ("listen_at", "warned"),
    [
        ("tcp://0.0.0.0:8786", True),
        ("tcp://[::]:8786", True),
        ("tcp://127.0.0.1:8786", False),
        ("tcp://10.0.0.5:8786", False),
        ("tls://0.0.0.0:8786", False),
        ("inproc://", False),
    ],
)
def test_a_scheduler_open_to_every_interface_without_tls_is_called_out(
    listen_at: str, warned: bool
) -> None:
    from conveyor.server.addresses import exposure_warning

    text = exposure_warning(listen_at)
    assert (text is not None) == warned
    if text is not None:
        assert "run any code on the workers" in text and "--host" in text
