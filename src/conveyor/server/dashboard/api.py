"""The dashboard's JSON API (version 1) and its routes.

Every path is under the scheduler's ``http_prefix`` (``/`` by default); every answer is
JSON (``Content-Type: application/json``) made from snapshots the scheduler keeps up to
date as it works, so that no request walks the scheduler's tasks.

``GET api/v1/status``
    ``{"scheduler": address, "workers": n, "threads": n, "tasks": n, "states": {state:
    n}, "loop_lag_ms": ms, "uptime": seconds}``: live tasks in all and per state, and how
    late the scheduler's event loop runs a timer (its load).
``GET api/v1/workers``
    ``[{"address", "name", "nthreads", "status", "cpu", "memory": {"managed",
    "unmanaged", "spilled", "limit"}, "processing": n, "executing": n}]``, by address.
    Memory is in bytes, ``cpu`` in percent of one core, both from the worker's last
    heartbeat (``unmanaged``: the process's memory beyond its data in memory; ``limit``
    0 means none). ``processing`` counts the tasks the scheduler gave it, ``executing``
    those it runs now.
``GET api/v1/prefixes``
    ``[{"prefix", "waiting", "queued", "no-worker", "processing", "memory", "erred",
    "released", "total", "forgotten"}]``, by prefix: how many live tasks of each key
    prefix (``"inc"`` for ``"inc-abc"``) are in each state, ``total`` of them, and how
    many were forgotten so far.
``GET api/v1/task-stream?since=N``
    ``{"next": M, "tasks": [{"prefix", "key", "worker", "start", "stop"}]}``: the runs
    that finished since cursor ``N`` (0 or absent: all those still kept, at most the
    last 10,000), oldest first; pass ``M`` as ``since`` next time. Times are seconds
    since the epoch, on the worker's clock; keys that are not strings are given as
    their ``str``.
``GET metrics``
    Prometheus text format (see :mod:`conveyor.server.dashboard.metrics`).
``GET`` (the prefix itself)
    The live page; ``static/...`` its files.
"""

from __future__ import annotations

import time
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from conveyor.core.types import SCHEDULER_STATES
from conveyor.server.dashboard.metrics import SchedulerCollector

if TYPE_CHECKING:
    from conveyor.core.records import WorkerInfo
    from conveyor.server.dashboard.service import Dashboard

#: the per-prefix columns, in the order the page shows them
PREFIX_STATES = ("waiting", "queued", "no-worker", "processing", "memory", "erred", "released")
LIVE_STATES = tuple(s for s in SCHEDULER_STATES if s != "forgotten")


def status(d: Dashboard) -> dict[str, Any]:
    """The body of ``api/v1/status``."""
    s = d.scheduler
    st = s.state
    states = dict.fromkeys(LIVE_STATES, 0)
    for prefix in st.task_prefixes.values():
        counts = prefix.states
        for name in LIVE_STATES:
            states[name] += counts[name]
    return {
        "scheduler": s.address,
        "workers": len(st.workers),
        "threads": st.total_nthreads,
        "tasks": len(st.tasks),
        "states": states,
        "loop_lag_ms": d.lag.lag * 1000,
        "uptime": max(time.time() - d.started, 0.0),
    }


def worker(ws: WorkerInfo) -> dict[str, Any]:
    """One worker's entry of ``api/v1/workers``."""
    metrics = ws.metrics or {}
    mem = metrics.get("memory") or {}
    managed = int(mem.get("managed", ws.nbytes))
    return {
        "address": ws.address,
        "name": ws.name,
        "nthreads": ws.nthreads,
        "status": ws.status,
        "cpu": float(mem.get("cpu", 0.0)),
        "memory": {
            "managed": managed,
            "unmanaged": max(int(mem.get("rss", 0)) - managed, 0),
            "spilled": int(mem.get("spilled", 0)),
            "limit": int(mem.get("limit", ws.memory_limit or 0)),
        },
        "processing": len(ws.processing),
        "executing": int(metrics.get("executing", 0)),
    }


def workers(d: Dashboard) -> list[dict[str, Any]]:
    """The body of ``api/v1/workers``."""
    st = d.scheduler.state
    return [worker(st.workers[a]) for a in sorted(st.workers)]


def prefixes(d: Dashboard) -> list[dict[str, Any]]:
    """The body of ``api/v1/prefixes``."""
    out = []
    for name in sorted(d.scheduler.state.task_prefixes):
        counts = d.scheduler.state.task_prefixes[name].states
        row: dict[str, Any] = {"prefix": name}
        for state in PREFIX_STATES:
            row[state] = counts[state]
        row["total"] = sum(counts[state] for state in LIVE_STATES)
        row["forgotten"] = counts["forgotten"]
        out.append(row)
    return out


def task_stream(d: Dashboard, since: int) -> dict[str, Any]:
    """The body of ``api/v1/task-stream?since=...``."""
    st = d.scheduler.state
    ring, count = st.task_stream, st.task_stream_count
    first = count - len(ring)  # the cursor of the oldest run kept
    skip = min(max(since - first, 0), len(ring))
    tasks = [
        {
            "prefix": prefix,
            "key": key if isinstance(key, str) else str(key),
            "worker": address,
            "start": start,
            "stop": stop,
        }
        for prefix, key, address, start, stop in islice(ring, skip, None)
    ]
    return {"next": count, "tasks": tasks}


def add_routes(app: web.Application, d: Dashboard, static: Path) -> None:
    """Route the page, its files, the API and the metrics under ``d.prefix``."""
    p = d.prefix
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SchedulerCollector(d))

    async def get_status(request: web.Request) -> web.Response:
        return web.json_response(status(d))

    async def get_workers(request: web.Request) -> web.Response:
        return web.json_response(workers(d))

    async def get_prefixes(request: web.Request) -> web.Response:
        return web.json_response(prefixes(d))

    async def get_task_stream(request: web.Request) -> web.Response:
        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="since must be an integer") from None
        return web.json_response(task_stream(d, since))

    async def get_metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def get_index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(static / "index.html")

    app.router.add_get(p, get_index)
    app.router.add_get(p + "api/v1/status", get_status)
    app.router.add_get(p + "api/v1/workers", get_workers)
    app.router.add_get(p + "api/v1/prefixes", get_prefixes)
    app.router.add_get(p + "api/v1/task-stream", get_task_stream)
    app.router.add_get(p + "metrics", get_metrics)
    app.router.add_static(p + "static", static)
