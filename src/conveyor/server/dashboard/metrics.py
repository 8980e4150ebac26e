"""Prometheus metrics of a scheduler, read from its snapshots at each scrape.

Families (the ``conveyor_`` prefix; ``_total`` ones are counters):

* ``conveyor_tasks{prefix, state}``: live tasks per key prefix and state;
* ``conveyor_tasks_forgotten_total{prefix}``: tasks forgotten so far, per prefix;
* ``conveyor_tasks_finished_total``: runs that finished on a worker;
* ``conveyor_transitions_total``: task state transitions;
* ``conveyor_workers{status}``, ``conveyor_threads``: the cluster's size;
* ``conveyor_worker_memory_bytes{worker, kind}``: managed, unmanaged and spilled bytes
  of each worker, and ``conveyor_worker_memory_limit_bytes{worker}``;
* ``conveyor_worker_cpu_percent{worker}``;
* ``conveyor_worker_transfer_incoming_bytes_total{worker}``: bytes each worker fetched
  from its peers, as of its last heartbeat;
* ``conveyor_event_loop_lag_seconds``: how late the scheduler's loop ran a timer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from conveyor.core.types import SCHEDULER_STATES

if TYPE_CHECKING:
    from conveyor.server.dashboard.service import Dashboard

LIVE_STATES = tuple(s for s in SCHEDULER_STATES if s != "forgotten")


class SchedulerCollector(Collector):
    """A collector for one scheduler's dashboard (registered in a registry of its own,
    not the process-wide one: a process may run several schedulers)."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def collect(self) -> Iterator[Metric]:
        """The families listed in the module's docstring, as they are now."""
        d = self.dashboard
        st = d.scheduler.state
        tasks = GaugeMetricFamily("conveyor_tasks", "Live tasks", labels=["prefix", "state"])
        forgotten = CounterMetricFamily(
            "conveyor_tasks_forgotten", "Tasks forgotten so far", labels=["prefix"]
        )
        for name, prefix in st.task_prefixes.items():
            counts = prefix.states
            for state in LIVE_STATES:
                tasks.add_metric([name, state], counts[state])
            forgotten.add_metric([name], counts["forgotten"])
        yield tasks
        yield forgotten
        yield CounterMetricFamily(
            "conveyor_tasks_finished", "Runs finished on workers", value=st.task_stream_count
        )
        yield CounterMetricFamily(
            "conveyor_transitions", "Task state transitions", value=st.transition_counter
        )
        workers = GaugeMetricFamily("conveyor_workers", "Workers", labels=["status"])
        by_status: dict[str, int] = {}
        for ws in st.workers.values():
            by_status[ws.status] = by_status.get(ws.status, 0) + 1
        for status, n in sorted(by_status.items()):
            workers.add_metric([status], n)
        yield workers
        yield GaugeMetricFamily("conveyor_threads", "Worker threads", value=st.total_nthreads)
        memory = GaugeMetricFamily(
            "conveyor_worker_memory_bytes", "Worker memory", labels=["worker", "kind"]
        )
        limit = GaugeMetricFamily(
            "conveyor_worker_memory_limit_bytes", "Worker memory limit", labels=["worker"]
        )
        cpu = GaugeMetricFamily("conveyor_worker_cpu_percent", "Worker CPU", labels=["worker"])
        incoming = CounterMetricFamily(
            "conveyor_worker_transfer_incoming_bytes",
            "Bytes a worker fetched from its peers",
            labels=["worker"],
        )
        for address, ws in st.workers.items():
            mem = (ws.metrics or {}).get("memory") or {}
            managed = int(mem.get("managed", ws.nbytes))
            memory.add_metric([address, "managed"], managed)
            memory.add_metric([address, "unmanaged"], max(int(mem.get("rss", 0)) - managed, 0))
            memory.add_metric([address, "spilled"], int(mem.get("spilled", 0)))
            limit.add_metric([address], int(mem.get("limit", ws.memory_limit or 0)))
            cpu.add_metric([address], float(mem.get("cpu", 0.0)))
            incoming.add_metric([address], int(ws.metrics.get("transfer_incoming_bytes", 0)))
        yield memory
        yield limit
        yield cpu
        yield incoming
        yield GaugeMetricFamily(
            "conveyor_event_loop_lag_seconds", "Scheduler event-loop lag", value=d.lag.lag
        )
