"""progress() counts every task behind the futures it is given (the scheduler's progress
extension walks their graph once, then follows transitions through a plugin that is
installed only while some progress is shown)."""

from __future__ import annotations

import asyncio
import io
import re
import threading
import types
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import dask.array as da
import numpy as np
import pytest

from conveyor import Client, LocalCluster, progress, wait
from conveyor.diagnostics import progress_notebook
from conveyor.server.extensions.progress import KeyProgress, ProgressExtension, ProgressPlugin
from conveyor.server.scheduler import Scheduler
from conveyor.testing.cluster import in_process_cluster, until, until_sync

T = TypeVar("T")

#: what the gated tasks wait for (the workers run in this process)
_GATE = threading.Event()


def wait_block(b: np.ndarray) -> np.ndarray:
    _GATE.wait(10)
    return b + 1


def fail_on_zero(b: np.ndarray) -> np.ndarray:
    _GATE.wait(10)
    if (b == 0).any():
        raise ValueError("a zero")
    return b


def wait_here(x: int) -> int:
    _GATE.wait(10)
    return x


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    _GATE.clear()
    yield _GATE
    _GATE.set()  # never leave a worker thread waiting


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """A fresh cluster per test: its scheduler holds only the test's tasks."""
    with LocalCluster(
        n_workers=2, threads_per_worker=2, processes=False, dashboard_address=None
    ) as c:
        yield c


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as c:
        yield c


def _scheduler(cluster: LocalCluster) -> Scheduler:
    s = cluster.scheduler
    assert s is not None
    return s


def _extension(s: Scheduler) -> ProgressExtension:
    ext = s.extensions["progress"]
    assert isinstance(ext, ProgressExtension)
    return ext


def _on_loop(s: Scheduler, fn: Callable[[], T]) -> T:
    """Run ``fn`` on the scheduler's event loop (to read its state safely)."""
    assert s.loop is not None

    async def call() -> T:
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), s.loop).result(10)


def _task_counts(s: Scheduler) -> tuple[Counter[str], Counter[str]]:
    """Tasks per prefix: those not in memory, and those in memory."""

    def count() -> tuple[Counter[str], Counter[str]]:
        tasks = s.state.tasks.values()
        pending = Counter(ts.prefix.name for ts in tasks if ts.state != "memory")
        memory = Counter(ts.prefix.name for ts in tasks if ts.state == "memory")
        return pending, memory

    return _on_loop(s, count)


def _assert_idle(s: Scheduler) -> None:
    """No tracker, no plugin, and nothing on the transitions' hot path."""
    ext = _extension(s)
    assert ext.trackers == {} and ext.watched == {}
    assert ProgressPlugin.name not in s.plugins
    assert s.state.transition_hook is None


def _open_gate_when_counting(s: Scheduler, gate: threading.Event) -> threading.Thread:
    """Open ``gate`` once the scheduler counts for a progress (so nothing behind the gate
    finished before it)."""
    ext = _extension(s)

    def run() -> None:
        try:
            until_sync(lambda: bool(ext.trackers), timeout=10, interval=0.005)
        finally:
            gate.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


_ROW = re.compile(r"^  (\S+) +\[[#-]+\] (\d+)/(\d+) \(\s*\d+%\)(?:, (\d+) failed)?$")


def _parse(text: str) -> tuple[tuple[int, int], dict[str, tuple[int, int, int]]]:
    """The final draw's ``(done, total)`` and ``{prefix: (total, done, failed)}``."""
    lines = text.rstrip("\n").split("\n")
    last = lines[0].split("\r")[-1]
    done, total = re.search(r"\] (\d+)/(\d+) \(", last).groups()  # type: ignore[union-attr]
    rows = {}
    for line in lines[1:]:
        m = _ROW.match(line)
        assert m, line
        rows[m[1]] = (int(m[3]), int(m[2]), int(m[4] or 0))
    return (int(done), int(total)), rows


def _layered(base: Any) -> Any:
    """A graph of several layers over ``base``; every new task waits behind the gate."""
    g = base.map_blocks(wait_block, dtype=float, meta=np.array((), dtype=float))
    return (g + g.T).sum(axis=0)


def test_compute_counts_every_task_of_the_graph(
    client: Client, cluster: LocalCluster, gate: threading.Event
) -> None:
    s = _scheduler(cluster)
    _assert_idle(s)
    base = client.persist(da.ones((20, 20), chunks=5))
    wait(base)
    fut = client.compute(_layered(base))
    until_sync(lambda: _on_loop(s, lambda: fut.key in s.state.tasks), what="graph sent")
    pending, memory = _task_counts(s)
    assert sum(memory.values()) == 16 and len(pending) >= 4  # several layers
    _open_gate_when_counting(s, gate)
    out = io.StringIO()
    progress(fut, file=out, notebook=False, complete=False)
    (done, total), rows = _parse(out.getvalue())
    # every task not in memory when progress began, each prefix apart
    assert total == done == sum(pending.values())
    assert rows == {p: (n, n, 0) for p, n in pending.items()}
    assert np.array_equal(fut.result(), np.full(20, 80.0))
    _assert_idle(s)


def test_persist_counts_every_task_with_those_done_already(
    client: Client, cluster: LocalCluster, gate: threading.Event
) -> None:
    s = _scheduler(cluster)
    base = client.persist(da.ones((20, 20), chunks=5))
    wait(base)
    persisted = client.persist(_layered(base))
    until_sync(lambda: _on_loop(s, lambda: len(s.state.tasks) > 16), what="graph sent")
    pending, memory = _task_counts(s)
    (ones,) = memory  # the 16 chunks of ``base``
    _open_gate_when_counting(s, gate)
    out = io.StringIO()
    progress(persisted, file=out, notebook=False)  # complete=True: base counts as done
    (done, total), rows = _parse(out.getvalue())
    assert total == done == sum(pending.values()) + 16
    assert rows[ones] == (16, 16, 0)
    assert {p: r for p, r in rows.items() if p != ones} == {
        p: (n, n, 0) for p, n in pending.items()
    }
    assert "(100%)" in out.getvalue().split("\n")[0].split("\r")[-1]
    assert np.array_equal(persisted.compute(), np.full(20, 80.0))
    _assert_idle(s)


def test_a_failing_task_shows_as_failed_and_progress_completes(
    client: Client, cluster: LocalCluster, gate: threading.Event
) -> None:
    s = _scheduler(cluster)
    x = da.arange(200, chunks=10).map_blocks(fail_on_zero, meta=np.array((), dtype=int))
    fut = client.compute((x + x[::-1]).sum())
    until_sync(lambda: _on_loop(s, lambda: fut.key in s.state.tasks), what="graph sent")
    n_tasks = _on_loop(s, lambda: len(s.state.tasks))
    _open_gate_when_counting(s, gate)
    out = io.StringIO()
    progress(fut, file=out, notebook=False)
    text = out.getvalue()
    (done, total), rows = _parse(text)
    assert done == total == n_tasks
    assert rows["fail_on_zero"][2] == 1  # the block holding 0 failed; the others did not
    failed = int(re.search(r"(\d+) failed", text.split("\n")[0].split("\r")[-1])[1])  # type: ignore[index]
    assert failed == sum(r[2] for r in rows.values()) > 1  # and what depended on it
    assert fut.status == "error"
    _assert_idle(s)


def test_await_progress_on_an_asynchronous_client_counts_the_graph() -> None:
    async def main() -> None:
        _GATE.clear()
        async with in_process_cluster(nthreads=2) as (s, _workers, c):
            try:
                ext = _extension(s)
                base = c.persist(da.ones((20, 20), chunks=5))
                await wait(base)
                fut = c.compute(_layered(base))
                await until(lambda: fut.key in s.state.tasks)
                pending = Counter(
                    ts.prefix.name for ts in s.state.tasks.values() if ts.state != "memory"
                )

                async def opener() -> None:
                    await until(lambda: bool(ext.trackers))
                    _GATE.set()

                opening = asyncio.create_task(opener())
                out = io.StringIO()
                await progress(fut, file=out, notebook=False, complete=False)
                await opening
                (done, total), rows = _parse(out.getvalue())
                assert total == done == sum(pending.values())
                assert rows == {p: (n, n, 0) for p, n in pending.items()}
                _assert_idle(s)
            finally:
                _GATE.set()

    asyncio.run(main())


def test_a_client_that_leaves_takes_its_trackers_and_the_plugin_goes() -> None:
    async def main() -> None:
        _GATE.clear()
        async with in_process_cluster() as (s, _workers, _c):
            try:
                ext = _extension(s)
                assert s.state.transition_hook is None
                c2 = await Client(s.address, asynchronous=True, set_as_default=False)
                fut = c2.submit(wait_here, 1, pure=False)
                following = asyncio.create_task(progress(fut, file=io.StringIO(), notebook=False))
                await until(lambda: bool(ext.trackers))
                assert s.plugins[ProgressPlugin.name] is ext.plugin
                assert s.state.transition_hook is not None  # counting costs only meanwhile
                (tracker,) = ext.trackers.values()
                assert tracker.client == c2.id
                await c2.close()
                await until(lambda: not ext.trackers and ProgressPlugin.name not in s.plugins)
                _assert_idle(s)
                with pytest.raises(RuntimeError, match="not connected"):
                    await following  # its client closed under it
            finally:
                _GATE.set()

    asyncio.run(main())


def test_giving_up_stops_the_count_and_cancelled_futures_are_not_run() -> None:
    async def main() -> None:
        _GATE.clear()
        async with in_process_cluster() as (s, _workers, c):
            try:
                ext = _extension(s)
                # cancelling the awaitable (an interrupted progress) drops its tracker
                fut = c.submit(wait_here, 1, pure=False)
                following = asyncio.create_task(progress(fut, file=io.StringIO(), notebook=False))
                await until(lambda: bool(ext.trackers))
                following.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await following
                await until(lambda: not ext.trackers and ProgressPlugin.name not in s.plugins)
                _assert_idle(s)
                # futures cancelled while shown: done, not run
                out = io.StringIO()
                following = asyncio.create_task(progress(fut, file=out, notebook=False))
                await until(lambda: bool(ext.trackers))
                await c.cancel(fut)
                await following
                last = out.getvalue().split("\n")[0].split("\r")[-1]
                assert "1/1 (100%)" in last and "1 not run" in last and "failed" not in last
                _assert_idle(s)
            finally:
                _GATE.set()

    asyncio.run(main())


class _FakeHandle:
    def __init__(self, shown: list[str]) -> None:
        self.shown = shown

    def update(self, obj: Any) -> None:
        self.shown.append(obj.data)


def _fake_display(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    shown: list[str] = []

    def fake_display(obj: Any, display_id: bool = False) -> _FakeHandle:
        shown.append(obj.data)
        return _FakeHandle(shown)

    monkeypatch.setattr(progress_notebook, "_display", fake_display)
    monkeypatch.setattr(progress_notebook, "_ipywidgets", lambda: None)
    return shown


def test_notebook_view_counts_the_graph(
    client: Client, cluster: LocalCluster, gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = _fake_display(monkeypatch)
    s = _scheduler(cluster)
    base = client.persist(da.ones((20, 20), chunks=5))
    wait(base)
    fut = client.compute(_layered(base))
    until_sync(lambda: _on_loop(s, lambda: fut.key in s.state.tasks), what="graph sent")
    pending, _memory = _task_counts(s)
    n = sum(pending.values())
    view = progress(fut, notebook=True, complete=False, interval=0)
    # returned at once, counted already: nothing can finish before the gate opens
    assert f"<b>0 / {n}</b>" in shown[0]
    gate.set()
    assert view.wait(10)
    assert f"<b>{n} / {n}</b> (100%)" in shown[-1]
    for prefix, k in pending.items():
        assert f">{prefix}</td>" in shown[-1] and f"{k} / {k}</td>" in shown[-1]
    until_sync(lambda: not _extension(s).trackers, what="tracker dropped")
    until_sync(lambda: ProgressPlugin.name not in s.plugins, what="plugin removed")
    _assert_idle(s)


def test_notebook_view_from_an_asynchronous_client(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = _fake_display(monkeypatch)

    async def main() -> None:
        async with in_process_cluster() as (s, _workers, c):
            x = da.arange(100, chunks=10)
            fut = c.compute((x + 1).sum())
            view = progress(fut, notebook=True, interval=0)
            assert "counting tasks" in shown[0]  # the loop counts once this coroutine yields
            await until(view.shown_complete.is_set)
            assert re.search(r"<b>(\d+) / \1</b> \(100%\)", shown[-1])
            assert await fut == sum(range(1, 101))
            await until(lambda: not _extension(s).trackers)
            await until(lambda: ProgressPlugin.name not in s.plugins)
            _assert_idle(s)

    asyncio.run(main())


class _StubTask:
    """What the extension reads of a scheduler task (hashed by identity, like one)."""

    def __init__(self, key: str, state: str, *deps: _StubTask) -> None:
        self.key = key
        self.state = state
        self.dependencies = deps
        prefix = types.SimpleNamespace(name=key.rsplit("-", 1)[0])
        self.group = types.SimpleNamespace(prefix=prefix)


def test_released_tasks_count_as_not_run_until_wanted_again() -> None:
    # the extension's counting alone, on a stub scheduler: a released task is one nothing
    # will run (done, "not run"); it counts as pending again if it is wanted again
    a = _StubTask("a-1", "released")
    b = _StubTask("b-1", "waiting", a)
    m = _StubTask("m-1", "memory")
    c = _StubTask("c-1", "waiting", b, m)
    stub = types.SimpleNamespace(
        handlers={}, plugins={}, state=types.SimpleNamespace(tasks={t.key: t for t in (a, b, c, m)})
    )
    ext = ProgressExtension(stub)  # type: ignore[arg-type]
    tracker = KeyProgress(1, None)
    ext._walk(tracker, ["c-1", "gone-1"], include_done=True)

    def counts() -> tuple[int, int, int, int]:
        r = tracker.report()
        return r["total"], r["done"], r["erred"], r["not_run"]

    # c, b, a watched (a parked); m done; gone-1 (forgotten already) not run
    assert set(ext.watched) == {"a-1", "b-1", "c-1"}
    assert counts() == (5, 3, 0, 2)
    assert [p for p, *_ in tracker.report()["prefixes"]] == ["c", "gone", "b", "m", "a"]
    ext.moved("a-1", "waiting")  # wanted again: not done any more
    assert counts() == (5, 2, 0, 1)
    ext.moved("a-1", "processing")
    ext.moved("a-1", "memory")
    ext.moved("b-1", "erred")
    assert counts() == (5, 4, 1, 1)
    ext.moved("c-1", "released")  # the failure left it for nothing to run
    assert counts() == (5, 5, 1, 2) and tracker.complete
    ext.moved("c-1", "forgotten")  # counted already
    assert counts() == (5, 5, 1, 2) and ext.watched == {}
    assert tracker.report()["prefixes"] == [
        ["c", 1, 1, 0],
        ["gone", 1, 1, 0],
        ["b", 1, 1, 1],
        ["m", 1, 1, 0],
        ["a", 1, 1, 0],
    ]
