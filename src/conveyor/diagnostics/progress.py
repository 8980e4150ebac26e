"""Progress of futures and collections: a bar in the terminal, a live view in Jupyter.

``progress(*futures_or_collections)`` follows futures (a list of them, a dict, a
``client.compute(...)`` result, or a collection from ``client.persist(...)``, whose
graph holds its futures) until every one is done, failed runs counting as done. It
counts every task behind them, as dask.distributed does: the futures' own and all
those they depend on that are not done yet, grouped by key prefix (``"inc"`` for
``"inc-abc"``). So ``progress(client.compute(x))`` shows each layer of ``x``'s graph.
The scheduler counts (:mod:`conveyor.server.extensions.progress`: it walks the graph
once when asked, then follows transitions only while some progress is shown); the
client polls its counts every ``interval`` seconds.

Where it draws:

- In a Jupyter kernel (or with ``notebook=True``) it displays an HTML view (an
  ``ipywidgets.HTML`` if ipywidgets is installed, else a display with an id that is
  updated in place), returns at once and updates the view as tasks finish
  (:mod:`conveyor.diagnostics.progress_notebook`).
- Elsewhere it draws a bar on ``file`` (stderr) and returns when all are done. With an
  asynchronous client's futures (or none, on a running event loop) it returns an
  awaitable instead: ``await progress(futures)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TextIO

from conveyor.client.collections import futures_of
from conveyor.client.future import Future
from conveyor.diagnostics.progress_notebook import _MIN_POLL, NotebookProgress, in_kernel

if TYPE_CHECKING:
    from conveyor.client.client import Client

__all__ = ["MIN_POLL", "ProgressTracker", "progress"]

logger = logging.getLogger(__name__)

#: the shortest period, in seconds, between two polls of the scheduler's counts
MIN_POLL = _MIN_POLL


class ProgressTracker:
    """Counts of tasks done, and failed, in all and per key prefix, for some futures and
    every task they depend on, as the scheduler reports them (``update``). Thread-safe.

    ``complete``: also count the tasks done already (else only those still to run). The
    coroutines ``register``, ``poll`` and ``stop`` talk to the scheduler's progress
    extension (:mod:`conveyor.server.extensions.progress`); they may be awaited on any
    event loop (the request runs on the client's).
    """

    def __init__(self, futures: Iterable[Future], complete: bool = True) -> None:
        self.futures = list(futures)
        self.include_done = complete
        clients = {id(f.client): f.client for f in self.futures}
        if len(clients) > 1:
            raise ValueError("progress follows the futures of one client at a time")
        #: the client of the futures (None without futures)
        self.client: Client | None = next(iter(clients.values()), None)
        self._lock = threading.Lock()
        #: per prefix: [total, done, failed], in the scheduler's order
        self.prefixes: dict[str, list[int]] = {}
        self.total = 0
        self.done = 0
        self.failed = 0
        #: tasks counted as done that will not run (the result they led to failed, or
        #: their futures were cancelled)
        self.not_run = 0
        #: the scheduler's id for this tracker (None: nothing to poll)
        self.ident: int | None = None
        #: whether the counts are the scheduler's (before the first report they are not)
        self.known = not self.futures
        self.started = time.monotonic()
        #: set once every task counted is done
        self.complete = threading.Event()
        if not self.futures:
            self.complete.set()

    def update(self, report: dict[str, Any]) -> None:
        """Take the counts of a report from the scheduler."""
        with self._lock:
            self.prefixes = {str(p): [int(n), int(d), int(e)] for p, n, d, e in report["prefixes"]}
            self.total = int(report["total"])
            self.done = int(report["done"])
            self.failed = int(report["erred"])
            self.not_run = int(report.get("not_run", 0))
            self.known = True
        if report["complete"]:
            self.complete.set()

    async def register(self) -> None:
        """Have the scheduler count the futures' tasks; take its first report."""
        if self.client is None or self.known:
            return
        msg = {
            "op": "progress-register",
            "keys": [f.key for f in self.futures],
            "complete": self.include_done,
        }
        report = await self._ask(msg)
        self.ident = report["id"]
        self.update(report)

    async def poll(self) -> None:
        """Take the scheduler's present counts (the last poll drops its tracker)."""
        if self.ident is not None and not self.complete.is_set():
            self.update(await self._ask({"op": "progress-poll", "id": self.ident}))

    async def stop(self) -> None:
        """Tell the scheduler to stop counting (when giving up before the end)."""
        if self.ident is not None and not self.complete.is_set():
            await self._ask({"op": "progress-stop", "id": self.ident})

    async def _ask(self, msg: dict[str, Any]) -> Any:
        client = self.client
        assert client is not None and client.loop is not None
        if self.on_client_loop():
            return await client._request(msg)
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(client._request(msg), client.loop)
        )

    def on_client_loop(self) -> bool:
        """Whether this runs on the client's event loop (an asynchronous client)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return self.client is not None and running is self.client.loop

    def in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` on the client's event loop without waiting for it."""
        assert self.client is not None and self.client.loop is not None
        if self.on_client_loop():
            task = self.client.loop.create_task(coro)
            _background.add(task)
            task.add_done_callback(_finished_in_background)
        else:
            fut = asyncio.run_coroutine_threadsafe(coro, self.client.loop)
            fut.add_done_callback(_finished_in_background)

    def elapsed(self) -> float:
        """Seconds since the tracker was made."""
        return time.monotonic() - self.started

    def snapshot(self) -> tuple[int, int, int, dict[str, tuple[int, int, int]]]:
        """``(total, done, failed, {prefix: (total, done, failed)})`` at this moment."""
        with self._lock:
            rows = {p: (c[0], c[1], c[2]) for p, c in self.prefixes.items()}
            return self.total, self.done, self.failed, rows


#: tasks following progress in the background (kept referenced until they end)
_background: set[Any] = set()


def _finished_in_background(fut: Any) -> None:
    _background.discard(fut)
    if not fut.cancelled() and fut.exception() is not None:
        logger.warning("Following progress failed: %r", fut.exception())


def _collect(objs: tuple[Any, ...], complete: bool) -> list[Future]:
    futures: list[Future] = []
    seen: set[Any] = set()
    for obj in objs:
        for f in [obj] if isinstance(obj, Future) else futures_of(obj):
            if f.key not in seen:
                seen.add(f.key)
                futures.append(f)
    if not complete:
        futures = [f for f in futures if not f.done()]
    return futures


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class TerminalBar:
    """Draws a tracker's state as text: a total bar and, with ``multi``, a line per key
    prefix. On a terminal the lines are redrawn in place; on another stream (a file,
    a pipe) the total line is redrawn with ``\\r`` and the per-prefix lines are written
    once, at the end."""

    def __init__(
        self, tracker: ProgressTracker, out: TextIO, label: str, width: int, multi: bool
    ) -> None:
        self.tracker = tracker
        self.out = out
        self.label = label
        self.width = width
        self.multi = multi
        isatty = getattr(out, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        self._lines_drawn = 0

    def _bar(self, done: int, total: int) -> tuple[str, float]:
        frac = done / total if total else 1.0
        filled = int(frac * self.width)
        return "#" * filled + "-" * (self.width - filled), frac

    def _lines(self, final: bool) -> list[str]:
        total, done, failed, rows = self.tracker.snapshot()
        bar, frac = self._bar(done, total)
        err = f", {failed} failed" if failed else ""
        if self.tracker.not_run:
            err += f", {self.tracker.not_run} not run"
        head = f"{self.label} " if self.label else ""
        t = self.tracker.elapsed()
        lines = [f"{head}[{bar}] {done}/{total} ({frac:4.0%}) {t:5.1f}s{err}"]
        if self.multi and (final or self.tty):
            name_w = max((len(p) for p in rows), default=0)
            for p, (n, d, f) in rows.items():
                pbar, pfrac = self._bar(d, n)
                perr = f", {f} failed" if f else ""
                lines.append(f"  {p:<{name_w}} [{pbar}] {d}/{n} ({pfrac:4.0%}){perr}")
        return lines

    def draw(self, final: bool = False) -> None:
        """Redraw; ``final``: the last time (ends with a newline)."""
        lines = self._lines(final)
        out = self.out
        if self.tty:
            if self._lines_drawn > 1:
                out.write(f"\x1b[{self._lines_drawn - 1}F")  # up to the first line drawn
            out.write("\r" + "\n".join(line + "\x1b[K" for line in lines))
            self._lines_drawn = len(lines)
        else:
            out.write("\r" + lines[0])
            if len(lines) > 1:
                out.write("\n" + "\n".join(lines[1:]))
        if final:
            out.write("\n")
        out.flush()


def progress(
    *futures: Any,
    notebook: bool | None = None,
    multi: bool = True,
    complete: bool = True,
    file: TextIO | None = None,
    width: int = 40,
    label: str = "",
    interval: float = 0.1,
) -> Any:
    """Show the progress of futures (or collections holding futures) until all are done.

    ``notebook``: draw an HTML view in Jupyter (default: when running in a Jupyter
    kernel); it returns at once (a :class:`NotebookProgress`) and updates as tasks
    finish. Otherwise draw a bar on ``file`` (stderr) and return None when all are done
    (failures count as done), or, for an asynchronous client's futures, return an
    awaitable that does so. The counts cover the futures' tasks and every task they
    depend on.
    ``multi``: also a line per key prefix. ``complete``: count tasks done already
    (else only those still to run). Polls the scheduler and redraws at most every
    ``interval`` seconds (polls at most every ``MIN_POLL``), and once at the end;
    ``label`` prefixes the bar, ``width`` its length.
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, not {width}")
    tracker = ProgressTracker(_collect(futures, complete), complete=complete)
    if notebook is None:
        notebook = in_kernel()
    if notebook:
        return NotebookProgress(tracker, multi=multi, interval=interval).start()
    bar = TerminalBar(tracker, file if file is not None else sys.stderr, label, width, multi)
    client = tracker.client
    if client is None:
        awaitable = _in_running_loop()
    else:
        awaitable = client.asynchronous or tracker.on_client_loop()
    if awaitable:
        return _follow_async(tracker, bar, interval)
    try:
        if client is not None:
            client.sync(tracker.register)
        bar.draw()
        last = time.monotonic()
        while not tracker.complete.is_set():
            time.sleep(max(interval, MIN_POLL))  # the polling period
            assert client is not None
            client.sync(tracker.poll)
            now = time.monotonic()
            if now - last >= interval and not tracker.complete.is_set():
                bar.draw()
                last = now
    finally:
        if client is not None and not tracker.complete.is_set():
            with contextlib.suppress(Exception):
                client.sync(tracker.stop)
    bar.draw(final=True)
    return None


async def _follow_async(tracker: ProgressTracker, bar: TerminalBar, interval: float) -> None:
    """``progress`` awaited on an event loop."""
    try:
        await tracker.register()
        bar.draw()
        last = time.monotonic()
        while not tracker.complete.is_set():
            await asyncio.sleep(max(interval, MIN_POLL))
            await tracker.poll()
            now = time.monotonic()
            if now - last >= interval and not tracker.complete.is_set():
                bar.draw()
                last = now
    finally:
        if not tracker.complete.is_set():
            with contextlib.suppress(Exception):
                await tracker.stop()
    bar.draw(final=True)
