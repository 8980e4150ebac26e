"""The task stream from the client: ``Client.get_task_stream`` and the
``get_task_stream`` context manager.

The scheduler keeps the last runs that finished in a bounded ring (10,000 by default,
:attr:`conveyor.core.scheduler.SchedulerState.TASK_STREAM_SIZE`); these read it through
the ``task-stream`` handler (:mod:`conveyor.server.extensions.task_stream`). Runs that
fell out of the ring before they were read are counted, never silently lost: see
:attr:`TaskStreamRecords.dropped`.
"""

from __future__ import annotations

import datetime
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from conveyor import config
from conveyor.client.current import default_client

if TYPE_CHECKING:
    from conveyor.client.client import Client
    from conveyor.client.shape import ClientShape

__all__ = ["TaskStreamMixin", "TaskStreamRecords", "get_task_stream"]


class TaskStreamRecords(list[dict[str, Any]]):
    """A list of task-stream records (dicts), oldest first, that also says how many
    runs it misses.

    Each record: ``key``, ``prefix``, ``worker`` (address), ``startstops`` (one
    ``{"action": "compute", "start": t0, "stop": t1}``, epoch seconds on the worker's
    clock), ``status`` (``"OK"``, or ``"error"`` for a run that raised) and ``nbytes``
    (the result's size while the scheduler still knows it, else None).
    """

    #: runs that matched but had left the scheduler's ring before they could be read
    dropped: int = 0


class TaskStreamMixin:
    """``Client.get_task_stream``."""

    def get_task_stream(
        self: ClientShape,
        start: Any = None,
        stop: Any = None,
        count: int | None = None,
    ) -> Any:
        """The runs the scheduler still keeps (its last 10,000), oldest first, as a
        :class:`TaskStreamRecords` list of dicts. ``start``/``stop``: epoch seconds, a
        ``datetime``, or a duration string (``"10s"``: that long ago), keeping the runs
        that overlap that window; ``count``: only the last ``count`` runs."""
        if count is not None and count < 0:
            raise ValueError(f"count must be >= 0, not {count}")
        return self.sync(_task_stream, self, None, _when(start), _when(stop), count)


def _when(t: Any) -> float | None:
    """Epoch seconds for a ``start``/``stop`` argument."""
    if t is None:
        return None
    if isinstance(t, datetime.datetime):
        return t.timestamp()
    if isinstance(t, str | datetime.timedelta):
        ago = config.parse_duration(t)
        assert ago is not None
        return time.time() - ago
    if isinstance(t, int | float):
        return float(t)
    raise TypeError(f"expected epoch seconds, a datetime or a duration string, not {t!r}")


def _record(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "key": r["key"],
        "prefix": r["prefix"],
        "worker": r["worker"],
        "startstops": ({"action": "compute", "start": r["start"], "stop": r["stop"]},),
        "status": r["status"],
        "nbytes": r["nbytes"],
    }


async def _task_stream(
    client: ClientShape,
    since: int | None,
    start: float | None,
    stop: float | None,
    count: int | None,
) -> TaskStreamRecords:
    reply = await client._request(
        {"op": "task-stream", "since": since or 0, "start": start, "stop": stop, "count": count}
    )
    out = TaskStreamRecords(_record(r) for r in reply["records"])
    if since is not None:  # asked from a cursor: the runs between it and the oldest kept are gone
        out.dropped = max(int(reply["first"]) - since, 0)
    return out


async def _cursor(client: ClientShape) -> int:
    reply = await client._request({"op": "task-stream", "count": 0})
    return int(reply["next"])


class get_task_stream:
    """Collect the task stream of the work done inside a ``with`` block.

    ``with get_task_stream() as ts: ...`` (``async with`` for an asynchronous client);
    afterwards ``ts.data`` holds a record (see :class:`TaskStreamRecords`) for every
    run that finished between entering and leaving, and ``ts.dropped`` how many of them
    the scheduler's ring (its last 10,000 runs) no longer held at exit: nonzero means
    ``data`` is incomplete. ``client``: the default client if None.
    """

    def __init__(self, client: Client | None = None) -> None:
        self.client = client
        #: the records, filled on exit
        self.data: TaskStreamRecords = TaskStreamRecords()
        self._since = 0

    @property
    def dropped(self) -> int:
        """Runs of the block that the scheduler's ring had already let go at exit."""
        return self.data.dropped

    def _client(self) -> Client:
        if self.client is None:
            self.client = default_client()
        return self.client

    def __enter__(self) -> get_task_stream:
        c = self._client()
        if c.asynchronous:
            raise RuntimeError("use `async with get_task_stream(...)` with an asynchronous client")
        self._since = c.sync(_cursor, c)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        c = self._client()
        self.data = c.sync(_task_stream, c, self._since, None, None, None)

    async def __aenter__(self) -> get_task_stream:
        self._since = await _cursor(self._client())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.data = await _task_stream(self._client(), self._since, None, None, None)
