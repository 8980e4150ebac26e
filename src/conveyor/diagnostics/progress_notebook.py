"""``progress`` in Jupyter: an HTML view updated in place as tasks finish.

With ipywidgets installed the view is an ``ipywidgets.HTML``; without, an
``IPython.display`` output with a display id, replaced with ``handle.update``. Nothing
here imports IPython unless a view is made (``in_kernel`` only looks whether a running
IPython is loaded already), so importing conveyor stays cheap outside notebooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import importlib
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.diagnostics.progress import ProgressTracker

#: the shortest polling period in seconds (``progress.MIN_POLL``, which imports this)
_MIN_POLL = 0.02

__all__ = ["NotebookProgress", "in_kernel", "render_html"]


def in_kernel() -> bool:
    """Whether this code runs in a Jupyter kernel (an IPython shell with a kernel)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _ipywidgets() -> Any:
    """The ipywidgets module, or None when it is not installed."""
    try:
        return importlib.import_module("ipywidgets")
    except ImportError:
        return None


def _ipython_display() -> Any:
    try:
        return importlib.import_module("IPython.display")
    except ImportError:
        raise ImportError("progress(notebook=True) needs IPython: pip install ipython") from None


def _display(obj: Any, display_id: bool = False) -> Any:
    """``IPython.display.display`` (a seam for tests)."""
    return _ipython_display().display(obj, display_id=display_id)


def _html(markup: str) -> Any:
    return _ipython_display().HTML(markup)


def _make_view(markup: str) -> Callable[[str], None]:
    """Display ``markup``; returns a function that replaces what is displayed."""
    widgets = _ipywidgets()
    if widgets is not None:
        widget = widgets.HTML(value=markup)
        _display(widget)

        def set_value(m: str) -> None:
            widget.value = m

        return set_value
    handle = _display(_html(markup), display_id=True)
    return lambda m: handle.update(_html(m))


_ROW = '<tr><td style="text-align:left;padding:1px 8px">{name}</td><td>{bar}</td>' + (
    '<td style="text-align:right;padding:1px 8px">{done} / {total}{failed}</td></tr>'
)


def _bar(done: int, total: int, failed: int) -> str:
    pct = 100.0 * done / total if total else 100.0
    colour = "#c33" if failed else ("#2a7" if done == total else "#36c")
    return (
        '<div style="width:240px;height:12px;background:#e6e6e6">'
        f'<div style="width:{pct:.1f}%;height:12px;background:{colour}"></div></div>'
    )


def render_html(tracker: ProgressTracker, multi: bool) -> str:
    """The view's HTML for the tracker's present state (prefixes escaped)."""
    if not tracker.known:
        return '<div class="conveyor-progress"><b>counting tasks ...</b></div>'
    total, done, failed, rows = tracker.snapshot()
    pct = 100.0 * done / total if total else 100.0
    lines = [
        '<div class="conveyor-progress">',
        f"<div><b>{done} / {total}</b> ({pct:.0f}%) in {tracker.elapsed():.1f} s"
        + (f', <span style="color:#c33">{failed} failed</span>' if failed else "")
        + (f", {tracker.not_run} not run" if tracker.not_run else "")
        + "</div>",
        "<table>",
    ]
    shown = rows.items() if multi else [("all", (total, done, failed))]
    for name, (n, d, f) in shown:
        lines.append(
            _ROW.format(
                name=html.escape(name),
                bar=_bar(d, n, f),
                done=d,
                total=n,
                failed=f" ({f} failed)" if f else "",
            )
        )
    lines += ["</table>", "</div>"]
    return "\n".join(lines)


class NotebookProgress:
    """A live progress view in a notebook; made and returned by ``progress``.

    A background coroutine on the client's event loop polls the scheduler's counts and
    updates the view, at most every ``interval`` seconds and once when every task is
    done; :meth:`wait` blocks until then.
    """

    def __init__(self, tracker: ProgressTracker, multi: bool = True, interval: float = 0.1):
        self.tracker = tracker
        self.multi = multi
        self.interval = interval
        self._update: Callable[[str], None] | None = None
        self._last = 0.0
        #: set once the view shows every task done
        self.shown_complete = threading.Event()

    def start(self) -> NotebookProgress:
        """Display the view and follow the tasks (returns at once). With a synchronous
        client the scheduler counts before the view first shows."""
        tracker = self.tracker
        client = tracker.client
        if client is not None and not client.asynchronous and not tracker.on_client_loop():
            client.sync(tracker.register)
        self._update = _make_view(render_html(tracker, self.multi))
        self._last = time.monotonic()
        if tracker.complete.is_set():
            self.shown_complete.set()
        else:
            tracker.in_background(self._follow())
        return self

    async def _follow(self) -> None:
        tracker = self.tracker
        period = max(self.interval, _MIN_POLL)
        try:
            if not tracker.known:
                await tracker.register()
                self._show()
            while not tracker.complete.is_set():
                await asyncio.sleep(period)
                await tracker.poll()
                self._show()
        finally:
            if not tracker.complete.is_set():
                with contextlib.suppress(Exception):
                    await tracker.stop()

    def _show(self) -> None:
        now = time.monotonic()
        final = self.tracker.complete.is_set()
        if not final and now - self._last < self.interval:
            return
        self._last = now
        assert self._update is not None
        self._update(render_html(self.tracker, self.multi))
        if final:
            self.shown_complete.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the view shows every task done (or ``timeout`` seconds);
        whether it does."""
        return self.shown_complete.wait(timeout)

    def _repr_html_(self) -> str:
        return render_html(self.tracker, self.multi)
