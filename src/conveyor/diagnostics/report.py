"""``performance_report``: what a block of work did, as one self-contained HTML file.

The file holds everything it shows (inline CSS and SVG, no script, no reference to any
other resource), so it can be mailed, archived or opened offline: the block's duration,
its task stream as a timeline (a row per worker thread slot: runs that overlap on a
worker are stacked), a table per task prefix, the workers, and the versions of conveyor
and dask that made it.

The runs come from the scheduler's task-stream ring (its last 10,000 runs): when a block
ran more than the ring holds, the report says how many runs it misses.
"""

from __future__ import annotations

import html
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from dask.utils import format_bytes, format_time

from conveyor.client.task_stream import TaskStreamRecords, get_task_stream
from conveyor.rpc.versions import versions

if TYPE_CHECKING:
    from conveyor.client.client import Client
    from conveyor.client.shape import ClientShape

__all__ = ["performance_report", "render_report"]

_CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}
.warn{color:#a40;font-weight:bold}
.swatch{display:inline-block;width:.8em;height:.8em;margin-right:.3em}
svg text{font-size:11px;font-family:sans-serif}
"""


async def _scheduler_info(client: ClientShape) -> Any:
    return await client._request({"op": "scheduler-info"})


class performance_report:
    """Write an HTML report of the work done inside a ``with`` block to ``filename``.

    ``with performance_report(filename="report.html"): ...`` (``async with`` for an
    asynchronous client). ``client``: the default client if None. The file is written
    on exit, also when the block raised. After exit, :attr:`records` holds the task
    stream it shows and :attr:`dropped` how many runs of the block it misses (the
    scheduler keeps the last 10,000).
    """

    def __init__(
        self,
        filename: str | Path = "conveyor-report.html",
        client: Client | None = None,
        title: str = "conveyor performance report",
    ) -> None:
        self.filename = Path(filename)
        self.title = title
        #: the block's task stream (the report's timeline and table)
        self._stream = get_task_stream(client)
        self._t0 = 0.0

    @property
    def records(self) -> TaskStreamRecords:
        """The task-stream records of the block (filled on exit)."""
        return self._stream.data

    @property
    def dropped(self) -> int:
        """Runs of the block that were no longer kept when the report was written."""
        return self._stream.dropped

    def __enter__(self) -> performance_report:
        self._t0 = time.time()
        self._stream.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stream.__exit__(exc_type, exc, tb)
        c = self._stream._client()
        self._write(time.time(), self._stream.data, c.sync(_scheduler_info, c))

    async def __aenter__(self) -> performance_report:
        self._t0 = time.time()
        await self._stream.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stream.__aexit__(exc_type, exc, tb)
        info = await _scheduler_info(self._stream._client())
        self._write(time.time(), self._stream.data, info)

    def _write(self, t1: float, records: TaskStreamRecords, info: Any) -> None:
        erred = Counter(r["prefix"] for r in records if r["status"] == "error")
        page = render_report(
            title=self.title,
            t0=self._t0,
            t1=t1,
            records=records,
            erred=erred,
            workers=info.get("workers", {}),
            scheduler=str(info.get("address", "")),
        )
        self.filename.write_text(page, encoding="utf-8")


def _colour(prefix: str) -> str:
    hue = zlib.crc32(prefix.encode()) % 360
    return f"hsl({hue},60%,55%)"


def _lanes(records: Iterable[dict[str, Any]]) -> tuple[list[tuple[str, int]], list[int]]:
    """Rows of the timeline: ``(worker, slot)`` pairs in order, and each record's row.

    A worker's runs go in its first slot free at their start (greedy interval packing),
    so with one run per thread the slots are its threads."""
    recs = list(records)
    order = sorted(range(len(recs)), key=lambda i: recs[i]["startstops"][0]["start"])
    free_at: dict[str, list[float]] = {}
    slot_of = [0] * len(recs)
    for i in order:
        ss = recs[i]["startstops"][0]
        slots = free_at.setdefault(recs[i]["worker"], [])
        for j, t in enumerate(slots):
            if t <= ss["start"]:
                slots[j] = ss["stop"]
                slot_of[i] = j
                break
        else:
            slot_of[i] = len(slots)
            slots.append(ss["stop"])
    rows = [(w, j) for w in sorted(free_at) for j in range(len(free_at[w]))]
    index = {r: n for n, r in enumerate(rows)}
    return rows, [index[(recs[i]["worker"], slot_of[i])] for i in range(len(recs))]


def _timeline(records: TaskStreamRecords) -> str:
    """The task stream as an inline SVG: a row per worker slot, time left to right."""
    if not records:
        return "<p>No task ran to completion in this block.</p>"
    rows, row_of = _lanes(records)
    t_min = min(r["startstops"][0]["start"] for r in records)
    t_max = max(r["startstops"][0]["stop"] for r in records)
    span = max(t_max - t_min, 1e-6)
    label_w, plot_w, row_h = 220, 900, 14
    height = len(rows) * row_h + 24
    e = html.escape
    parts = [
        f'<svg width="{label_w + plot_w + 10}" '
        f'height="{height}" role="img" aria-label="task stream">'
    ]
    for n, (worker, slot) in enumerate(rows):
        y = n * row_h
        parts.append(
            f'<text x="0" y="{y + row_h - 3}">{e(worker)} #{slot}</text>'
            f'<line x1="{label_w}" x2="{label_w + plot_w}" y1="{y + row_h}" '
            f'y2="{y + row_h}" stroke="#eee"/>'
        )
    for r, n in zip(records, row_of, strict=True):
        ss = r["startstops"][0]
        x = label_w + (ss["start"] - t_min) / span * plot_w
        w = max((ss["stop"] - ss["start"]) / span * plot_w, 0.5)
        tip = (
            f"{r['key']} ({r['prefix']}) on {r['worker']}: {format_time(ss['stop'] - ss['start'])}"
        )
        parts.append(
            f'<rect x="{x:.2f}" y="{n * row_h + 1}" width="{w:.2f}" height="{row_h - 2}" '
            f'fill="{_colour(r["prefix"])}"><title>{e(tip)}</title></rect>'
        )
    axis_y = len(rows) * row_h + 16
    parts.append(f'<text x="{label_w}" y="{axis_y}">0 s</text>')
    parts.append(
        f'<text x="{label_w + plot_w}" y="{axis_y}" text-anchor="end">{e(format_time(span))}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _prefix_rows(records: TaskStreamRecords, erred: Mapping[str, int]) -> list[list[str]]:
    stats: dict[str, list[float]] = {}
    for r in records:
        ss = r["startstops"][0]
        s = stats.setdefault(r["prefix"], [0, 0.0])
        s[0] += 1
        s[1] += ss["stop"] - ss["start"]
    out = []
    for name in sorted(set(stats) | {p for p, n in erred.items() if n}):
        count, total = stats.get(name, [0, 0.0])
        mean = format_time(total / count) if count else "-"
        swatch = f'<span class="swatch" style="background:{_colour(name)}"></span>'
        out.append(
            [
                swatch + html.escape(name),
                str(int(count)),
                html.escape(format_time(total)),
                html.escape(mean),
                str(erred.get(name, 0)),
            ]
        )
    return out


def _table(head: list[str] | None, rows: list[list[str]]) -> str:
    """An HTML table; ``rows`` are escaped by the caller."""
    lines = ["<table>"]
    if head:
        lines.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
    lines += ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows]
    lines.append("</table>")
    return "\n".join(lines)


def render_report(
    *,
    title: str,
    t0: float,
    t1: float,
    records: TaskStreamRecords,
    erred: Mapping[str, int],
    workers: Mapping[str, Mapping[str, Any]],
    scheduler: str,
) -> str:
    """The report's HTML (a complete, well-formed document) for a block that ran from
    ``t0`` to ``t1`` (epoch seconds), ran ``records`` (``erred``: how many of them raised,
    per prefix), on ``workers`` (``scheduler_info()["workers"]``)."""
    e = html.escape
    packages = versions()["packages"]
    worker_rows = []
    for address in sorted(workers):
        w = workers[address]
        limit = w.get("memory_limit")
        worker_rows.append(
            [
                e(address),
                e(str(w.get("name", ""))),
                str(int(w.get("nthreads", 0))),
                e(format_bytes(limit) if limit else "unlimited"),
            ]
        )
    compute = sum(r["startstops"][0]["stop"] - r["startstops"][0]["start"] for r in records)
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0))
    warn = ""
    if records.dropped:
        warn = (
            f'<p class="warn">{records.dropped} runs of this block are missing: the scheduler '
            "keeps only its last runs, and they had been replaced when the report was "
            "written.</p>"
        )
    summary = [
        ["Started", e(started)],
        ["Duration", e(format_time(t1 - t0))],
        ["Tasks run", str(len(records) + records.dropped)],
        ["Compute time", e(format_time(compute))],
        ["Scheduler", e(scheduler)],
        ["conveyor version", e(str(packages.get("conveyor")))],
        ["dask version", e(str(packages.get("dask")))],
        ["Python", e(str(packages.get("python")))],
    ]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            '<head><meta charset="utf-8"/>',
            f"<title>{e(title)}</title>",
            f"<style>{_CSS}</style></head>",
            "<body>",
            f"<h1>{e(title)}</h1>",
            warn,
            _table(None, summary),
            "<h2>Task stream</h2>",
            _timeline(records),
            "<h2>Task prefixes</h2>",
            _table(
                ["Prefix", "Runs", "Total time", "Mean time", "Erred"],
                _prefix_rows(records, erred),
            ),
            "<h2>Workers</h2>",
            _table(["Address", "Name", "Threads", "Memory limit"], worker_rows),
            f"<p>Made by conveyor {e(str(packages.get('conveyor')))}.</p>",
            "</body></html>",
        ]
    )
