"""The task stream and per-prefix counts, for ``Client.get_task_stream`` and
``performance_report``.

Reads what the scheduler keeps anyway (:attr:`SchedulerState.task_stream`, a bounded
ring of finished runs with a cursor, and each prefix's state counts): an answer costs
at most the ring's length, never a walk of the tasks.
"""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.rpc import Msg, Peer
    from conveyor.server.scheduler import Scheduler


class TaskStreamExtension:
    """Answers ``task-stream`` and ``prefix-counts``.

    ``task-stream`` takes ``since`` (a cursor: the ``next`` of an earlier answer, 0 for
    everything kept), ``start``/``stop`` (epoch seconds: runs that ended after ``start``
    and began before ``stop``) and ``count`` (only the last ``count`` runs), and answers
    ``{"next": cursor, "first": cursor of the oldest run kept, "size": the ring's
    capacity, "records": [...]}``, oldest first; runs before ``first`` were dropped.
    ``prefix-counts`` answers ``{prefix: {state: n}}`` (``"forgotten"`` counts the
    tasks forgotten so far).
    """

    name = "task-stream"

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        scheduler.handlers["task-stream"] = self.task_stream
        scheduler.handlers["prefix-counts"] = self.prefix_counts

    def task_stream(self, peer: Peer, msg: Msg) -> dict[str, Any]:
        """The runs kept in the ring that match ``msg``'s filters."""
        st = self.scheduler.state
        ring, count = st.task_stream, st.task_stream_count
        first = count - len(ring)
        since = int(msg.get("since") or 0)
        skip = min(max(since - first, 0), len(ring))
        start, stop, n = msg.get("start"), msg.get("stop"), msg.get("count")
        tasks = st.tasks
        records = []
        for prefix, key, worker, begin, end, erred in islice(ring, skip, None):
            if (start is not None and end < start) or (stop is not None and begin > stop):
                continue
            ts = tasks.get(key)
            nbytes = ts.nbytes if ts is not None and ts.nbytes >= 0 else None
            records.append(
                {
                    "key": key,
                    "prefix": prefix,
                    "worker": worker,
                    "start": begin,
                    "stop": end,
                    "status": "error" if erred else "OK",
                    "nbytes": nbytes,
                }
            )
        if n is not None:
            records = records[-int(n) :] if int(n) > 0 else []
        return {"next": count, "first": first, "size": ring.maxlen, "records": records}

    def prefix_counts(self, peer: Peer, msg: Msg) -> dict[str, dict[str, int]]:
        """Every prefix's task counts by state."""
        return {name: dict(p.states) for name, p in self.scheduler.state.task_prefixes.items()}
