"""Readable ``repr`` and Jupyter ``_repr_html_`` for ``Client`` and ``Future``.

The summaries come from :mod:`conveyor.deploy.reprs`. A client's workers are read from
its cluster's in-process scheduler when it has one; otherwise ``_repr_html_`` asks the
scheduler (``scheduler_info``, at most 2 seconds) unless that would block an event loop
running in this thread, and ``__repr__`` never asks (a repr must not wait on the
network).
"""

from __future__ import annotations

import asyncio
import html
import logging
from typing import TYPE_CHECKING, Any

from conveyor.deploy.reprs import (
    WorkerRow,
    cluster_html,
    cluster_text,
    link,
    rows_from_info,
    rows_from_state,
)

if TYPE_CHECKING:
    from conveyor.client.future import Future
    from conveyor.client.shape import ClientShape

__all__ = ["ReprMixin", "future_html"]

logger = logging.getLogger("conveyor.client")

#: seconds ``_repr_html_`` waits for the scheduler's answer
_INFO_TIMEOUT = 2.0


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _rows(client: ClientShape, ask: bool) -> list[WorkerRow] | None:
    """The client's workers, or None when not known without waiting (or at all)."""
    workers = getattr(getattr(client.cluster, "scheduler", None), "workers", None)
    if isinstance(workers, dict):
        return rows_from_state(workers)
    if not ask or client.asynchronous or client.status != "running" or _in_running_loop():
        return None
    try:
        info = client.sync(client._request, {"op": "scheduler-info"}, timeout=_INFO_TIMEOUT)
    except Exception as e:  # a repr shows what it can
        logger.debug("no scheduler info for the client's repr: %r", e)
        return None
    return rows_from_info(info.get("workers", {}))


def _address(client: ClientShape) -> str | None:
    return client.scheduler.address if client.scheduler is not None else None


class ReprMixin:
    """``Client.__repr__`` and ``Client._repr_html_``."""

    def __repr__(self: ClientShape) -> str:
        address = _address(self) or "not connected"
        return cluster_text("Client", address, self.status, _rows(self, ask=False))

    def _repr_html_(self: ClientShape) -> str:
        """Jupyter's view: scheduler address, dashboard link (clickable), status, and
        the workers' count, threads and memory when known."""
        address = _address(self)
        fields = {
            "Scheduler": html.escape(address) if address else "not connected",
            "Dashboard": link(getattr(self, "dashboard_link", None)),
            "Status": html.escape(self.status),
        }
        if self.cluster is not None:
            fields["Cluster"] = html.escape(type(self.cluster).__name__)
        return cluster_html("Client", fields, _rows(self, ask=True), show_workers=False)


def future_html(future: Future) -> str:
    """A Future as HTML: its key, status and the type of its result when known."""
    e = html.escape
    status = future.status
    colour = {"finished": "#2a7", "error": "#c33", "cancelled": "#999", "lost": "#c80"}
    style = f"color:{colour.get(status, '#36c')}"
    parts = [
        "<strong>Future:</strong> ",
        f"<code>{e(str(future.key))}</code>",
        f' <b>status:</b> <span style="{style}">{e(status)}</span>',
    ]
    kind: Any = future._state.type
    if kind:
        parts.append(f", <b>type:</b> <code>{e(str(kind))}</code>")
    return "<div>" + "".join(parts) + "</div>"
