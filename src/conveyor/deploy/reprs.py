"""Readable summaries of a cluster, as text and as HTML (for Jupyter's ``_repr_html_``).

Shared by ``LocalCluster`` and ``Client`` (:mod:`conveyor.client.reprs`). Everything
shown is escaped with :func:`html.escape`; the HTML is plain (inline styles, no script,
no resource from anywhere).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from dask.utils import format_bytes

__all__ = ["WorkerRow", "cluster_html", "cluster_text", "link", "rows_from_info", "rows_from_state"]

_TABLE = 'style="border-collapse:collapse;text-align:left"'
_CELL = 'style="padding:2px 8px;border-bottom:1px solid #ddd"'


class WorkerRow(NamedTuple):
    """What a summary shows of one worker."""

    address: str
    name: str
    nthreads: int
    #: bytes; 0 or None: no limit
    memory_limit: int | None


def rows_from_state(workers: Any) -> list[WorkerRow]:
    """Rows for the ``WorkerInfo`` records of an in-process scheduler (``s.workers``),
    by address. Copies the mapping first: the scheduler's loop may be changing it."""
    return sorted(
        WorkerRow(ws.address, str(ws.name), ws.nthreads, ws.memory_limit)
        for ws in list(workers.values())
    )


def rows_from_info(workers: Mapping[str, Mapping[str, Any]]) -> list[WorkerRow]:
    """Rows for the ``"workers"`` of ``Client.scheduler_info()``, by address."""
    return sorted(
        WorkerRow(a, str(w.get("name", a)), int(w.get("nthreads", 0)), w.get("memory_limit"))
        for a, w in workers.items()
    )


def _memory(rows: Iterable[WorkerRow]) -> str:
    limits = [r.memory_limit for r in rows]
    if not limits:
        return "0 B"
    if any(not m for m in limits):
        return "unlimited"
    return format_bytes(sum(m or 0 for m in limits))


def cluster_text(kind: str, address: str, status: str, rows: list[WorkerRow] | None) -> str:
    """``<kind: 'address' status=..., workers=n, threads=n, memory=...>``; without
    ``rows`` (not known) just the address and status."""
    head = f"<{kind}: {address!r} status={status}"
    if rows is None:
        return head + ">"
    threads = sum(r.nthreads for r in rows)
    return f"{head}, workers={len(rows)}, threads={threads}, memory={_memory(rows)}>"


def _row(cells: Iterable[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag} {_CELL}>{c}</{tag}>" for c in cells) + "</tr>"


def link(url: str | None) -> str:
    """A clickable link to ``url`` (opening in a new tab), or "none"."""
    if not url:
        return "none"
    u = html.escape(url)
    return f'<a href="{u}" target="_blank" rel="noopener">{u}</a>'


def cluster_html(
    kind: str,
    fields: Mapping[str, str],
    rows: list[WorkerRow] | None,
    show_workers: bool,
) -> str:
    """An HTML block: a title ``kind``, a table of ``fields`` (label -> HTML, which the
    caller escaped), the worker count, threads and memory when ``rows`` are known, and
    with ``show_workers`` a table of the workers."""
    e = html.escape
    lines = [f'<div class="conveyor-{e(kind.lower())}">', f"<strong>{e(kind)}</strong>"]
    summary = dict(fields)
    if rows is not None:
        summary["Workers"] = str(len(rows))
        summary["Threads"] = str(sum(r.nthreads for r in rows))
        summary["Memory"] = e(_memory(rows))
    lines.append(f"<table {_TABLE}>")
    lines += [_row([f"<b>{e(k)}</b>", v]) for k, v in summary.items()]
    lines.append("</table>")
    if show_workers and rows:
        lines.append(f"<details open><summary>Workers</summary><table {_TABLE}>")
        lines.append(_row(["Name", "Address", "Threads", "Memory"], "th"))
        for r in rows:
            memory = format_bytes(r.memory_limit) if r.memory_limit else "unlimited"
            lines.append(_row([e(r.name), e(r.address), str(r.nthreads), e(memory)]))
        lines.append("</table></details>")
    lines.append("</div>")
    return "\n".join(lines)
