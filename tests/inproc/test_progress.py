"""progress(): the terminal bar (drawn into a StringIO) and the Jupyter view (with the
display function faked)."""

from __future__ import annotations

import asyncio
import io
import re
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

import dask.array as da
import pytest
from dask.utils import key_split

from conveyor import Client, LocalCluster, progress
from conveyor.diagnostics import progress_notebook
from conveyor.diagnostics.progress_notebook import NotebookProgress
from conveyor.testing.cluster import in_process_cluster


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return 2 * x


def fail(x: int) -> int:
    raise ValueError(x)


#: what ``wait_here`` tasks wait for (the workers run in this process)
_GATE = threading.Event()


def wait_here(x: int) -> int:
    _GATE.wait(10)
    return x


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    _GATE.clear()
    yield _GATE
    _GATE.set()  # never leave a worker thread waiting


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=2, threads_per_worker=2, processes=False, dashboard_address=None
    ) as c:
        yield c


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as c:
        yield c


def _last_total(text: str) -> str:
    """The last state of the total line (the line redrawn with ``\\r``)."""
    return text.split("\n")[0].split("\r")[-1]


def test_terminal_bar_reaches_100_percent_with_prefix_lines(client: Client) -> None:
    out = io.StringIO()
    incs = client.map(inc, range(20))
    doubles = client.map(double, range(10))
    assert progress(incs, doubles, file=out, notebook=False, label="work") is None
    text = out.getvalue()
    assert all(f.done() for f in incs + doubles)
    total = _last_total(text)
    assert total.startswith("work [" + "#" * 40 + "]") and "30/30 (100%)" in total
    lines = text.rstrip("\n").split("\n")
    assert lines[1].split() == ["inc", "[" + "#" * 40 + "]", "20/20", "(100%)"]
    assert lines[2].split() == ["double", "[" + "#" * 40 + "]", "10/10", "(100%)"]
    assert text.endswith("\n")
    # multi=False: the total only
    out2 = io.StringIO()
    progress(incs, file=out2, notebook=False, multi=False)
    assert out2.getvalue().count("\n") == 1 and "20/20 (100%)" in out2.getvalue()


def _total_line(text: str) -> tuple[int, int]:
    """``(done, total)`` from the last state of the total line."""
    done, total = _last_total(text).split("] ")[1].split()[0].split("/")
    return int(done), int(total)


def test_persisted_and_computed_collections(client: Client) -> None:
    x = da.arange(100, chunks=10) + 1
    persisted = client.persist(x)
    out = io.StringIO()
    progress(persisted, file=out, notebook=False)
    done, total = _total_line(out.getvalue())
    # the 10 chunks, and those of the arange layer that were not done yet: timing
    assert done == total and 10 <= total <= 20, out.getvalue()
    assert "(100%)" in _last_total(out.getvalue())
    prefix = key_split(next(iter(persisted.__dask_keys__()))[0])
    assert re.search(rf"^  {prefix} +\[", out.getvalue(), re.M)
    total_f = client.compute(persisted.sum())
    out = io.StringIO()
    progress(total_f, file=out, notebook=False)
    done, total = _total_line(out.getvalue())
    # the sum's tasks, and the 10 chunks it starts from (in memory: counted as done)
    assert done == total > 10 and "(100%)" in _last_total(out.getvalue())
    assert re.search(rf"^  {prefix} +\[#+\] 10/10", out.getvalue(), re.M)
    assert total_f.result() == sum(range(1, 101))


def test_failures_count_as_done_and_are_shown(client: Client) -> None:
    out = io.StringIO()
    fs = client.map(fail, range(3)) + client.map(inc, range(2))
    progress(fs, file=out, notebook=False)
    text = out.getvalue()
    assert "5/5 (100%)" in _last_total(text) and "3 failed" in _last_total(text)
    assert "fail [" in text and "3/3 (100%), 3 failed" in text


def test_complete_false_counts_only_pending_futures(client: Client, gate: threading.Event) -> None:
    done = client.map(inc, range(4))
    client.gather(done)
    pending = client.submit(wait_here, 1, pure=False)
    threading.Timer(0.05, gate.set).start()  # lets progress start first (not required)
    out = io.StringIO()
    progress(done, pending, file=out, notebook=False, complete=False)
    assert "1/1 (100%)" in _last_total(out.getvalue())
    assert pending.result() == 1


def test_terminal_redraws_in_place_on_a_tty(client: Client, gate: threading.Event) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    fs = [client.submit(wait_here, i, pure=False) for i in range(3)]
    fs += client.map(inc, range(3))
    client.gather(fs[3:])  # some done, some waiting: at least two draws
    threading.Timer(0.2, gate.set).start()
    progress(fs, file=out, notebook=False, interval=0)
    text = out.getvalue()
    assert "\x1b[2F" in text  # moved up over the previous draw's prefix lines
    final = text.split("\x1b[2F")[-1]
    assert "6/6 (100%)" in final and "wait_here [" in final and "3/3 (100%)" in final


def test_await_progress_on_an_asynchronous_client() -> None:
    async def main() -> None:
        async with in_process_cluster() as (_s, _workers, c):
            out = io.StringIO()
            fs = c.map(inc, range(10))
            await progress(fs, file=out, notebook=False)
            assert all(f.done() for f in fs)
            assert "10/10 (100%)" in _last_total(out.getvalue())

    asyncio.run(main())


class _FakeHandle:
    def __init__(self, shown: list[str]) -> None:
        self.shown = shown

    def update(self, obj: Any) -> None:
        self.shown.append(obj.data)


def test_notebook_view_with_display_handle(
    client: Client, gate: threading.Event, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    shown: list[str] = []

    def fake_display(obj: Any, display_id: bool = False) -> _FakeHandle:
        assert display_id is True
        shown.append(obj.data)
        return _FakeHandle(shown)

    monkeypatch.setattr(progress_notebook, "_display", fake_display)
    monkeypatch.setattr(progress_notebook, "_ipywidgets", lambda: None)
    fs = [client.submit(wait_here, i, pure=False) for i in range(4)]
    fs += client.map(double, range(6))
    view = progress(fs, notebook=True, interval=0)
    assert isinstance(view, NotebookProgress)  # returned at once: nothing waits
    assert "/ 10</b>" in shown[0] and "10 / 10" not in shown[0]
    gate.set()
    assert view.wait(10)
    last = shown[-1]
    assert "<b>10 / 10</b> (100%)" in last
    assert "wait_here" in last and "4 / 4" in last and "double" in last and "6 / 6" in last
    assert len(shown) >= 2


def test_notebook_view_with_ipywidgets_in_a_kernel(client: Client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    widgets: list[Any] = []

    class FakeHTML:
        def __init__(self, value: str) -> None:
            self.values = [value]
            widgets.append(self)

        def __setattr__(self, name: str, value: Any) -> None:
            if name == "value":
                self.values.append(value)
            else:
                object.__setattr__(self, name, value)

    displayed: list[Any] = []
    monkeypatch.setattr(progress_notebook, "_display", lambda obj, **kw: displayed.append(obj))
    monkeypatch.setattr(
        progress_notebook, "_ipywidgets", lambda: types.SimpleNamespace(HTML=FakeHTML)
    )
    # a running IPython with a kernel: progress picks the notebook view by itself
    kernel_shell = types.SimpleNamespace(kernel=object())
    fake_ipython = types.SimpleNamespace(get_ipython=lambda: kernel_shell)
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython)
    assert progress_notebook.in_kernel()
    fs = client.map(inc, range(5), key=[f"a<i>&b-{i}" for i in range(5)])
    view = progress(fs)
    assert view.wait(10)
    (widget,) = widgets
    assert displayed == [widget]
    assert "<b>5 / 5</b> (100%)" in widget.values[-1]
    assert ">a&lt;i&gt;&amp;b</td>" in widget.values[-1] and "<i>" not in widget.values[-1]
    assert "5 / 5</td>" in widget.values[-1]


def test_not_in_a_kernel_without_ipython(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not progress_notebook.in_kernel()
    shell = types.SimpleNamespace(get_ipython=lambda: types.SimpleNamespace())  # terminal IPython
    monkeypatch.setitem(sys.modules, "IPython", shell)
    assert not progress_notebook.in_kernel()
