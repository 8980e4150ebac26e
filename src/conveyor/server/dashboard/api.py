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
``GET api/v1/task-stream?since=N&limit=L&format=full|compact``
    The runs that finished since cursor ``N`` (0 or absent: all those still kept, at
    most the last 10,000), oldest first; with ``limit``, only the newest ``L`` of them.
    ``{"next": M, "skipped": k, "tasks": [{"prefix", "key", "worker", "start",
    "stop"}]}``: pass ``M`` as ``since`` next time; ``skipped`` runs after ``N`` are
    not in the answer (no longer kept, or beyond ``limit``). Times are seconds since
    the epoch, on the worker's clock; keys that are not strings are given as their
    ``str``. ``format=compact`` (what the page uses: about a fifteenth of the bytes)
    drops the keys and gives the runs as columns: ``{"next", "skipped", "t0": seconds,
    "tasks": {"prefix": [i], "worker": [i], "start": [ms], "duration": [ms]},
    "prefixes": [name], "workers": [address]}``: run ``j`` ran a task of prefix
    ``prefixes[tasks.prefix[j]]`` on ``workers[tasks.worker[j]]``, starting
    ``tasks.start[j]`` whole milliseconds after ``t0``, for ``tasks.duration[j]`` whole
    milliseconds; ``tasks.erred`` lists the indices of the runs that raised. With
    ``merge_ms=G`` (compact only), runs of one prefix on one worker that follow each
    other with pauses under ``G`` ms come as one span with their ``tasks.count``.
``GET api/v1/snapshot?since=N&limit=L&merge_ms=G``
    ``{"status", "workers", "prefixes", "task_stream"}``: the answers of the four
    routes above in one (the task stream in the compact form, with ``since`` and
    ``limit`` as there). The page polls this one route: a request costs a browser
    a few milliseconds of CPU whatever its size, so one a second rather than four.
``GET metrics``
    Prometheus text format (see :mod:`conveyor.server.dashboard.metrics`).
``GET`` (the prefix itself)
    The live page; ``static/...`` its files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from functools import partial
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from conveyor.core.types import SCHEDULER_STATES, Key
from conveyor.server.dashboard.metrics import SchedulerCollector

if TYPE_CHECKING:
    from conveyor.core.records import WorkerInfo
    from conveyor.server.dashboard.service import Dashboard

#: the per-prefix columns, in the order the page shows them
PREFIX_STATES = ("waiting", "queued", "no-worker", "processing", "memory", "erred", "released")
LIVE_STATES = tuple(s for s in SCHEDULER_STATES if s != "forgotten")

#: one finished run as the scheduler keeps it: prefix, key, worker, start, stop
Run = tuple[str, Key, str, float, float, bool]

#: JSON without the optional spaces: a tenth fewer bytes, nothing else changes
_dumps = partial(json.dumps, separators=(",", ":"))


def json_response(body: Any) -> web.Response:
    """``body`` as a compact JSON answer."""
    return web.json_response(body, dumps=_dumps)


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


def _runs(d: Dashboard, since: int, limit: int | None) -> tuple[int, int, Iterator[Run]]:
    """``(next, skipped, runs)``: the kept runs after cursor ``since``, at most the
    newest ``limit`` of them."""
    st = d.scheduler.state
    ring, count = st.task_stream, st.task_stream_count
    first = count - len(ring)  # the cursor of the oldest run kept
    skip = min(max(since - first, 0), len(ring))
    if limit is not None:
        skip = max(skip, len(ring) - limit)
    return count, count - max(since, 0) - (len(ring) - skip), islice(ring, skip, None)


def task_stream(d: Dashboard, since: int, limit: int | None = None) -> dict[str, Any]:
    """The body of ``api/v1/task-stream?since=...&limit=...`` (the full form)."""
    count, skipped, runs = _runs(d, since, limit)
    tasks = [
        {
            "prefix": prefix,
            "key": key if isinstance(key, str) else str(key),
            "worker": address,
            "start": start,
            "stop": stop,
            "status": "error" if erred else "OK",
        }
        for prefix, key, address, start, stop, erred in runs
    ]
    return {"next": count, "skipped": max(skipped, 0), "tasks": tasks}


def task_stream_compact(
    d: Dashboard, since: int, limit: int | None = None, merge_ms: float | None = None
) -> dict[str, Any]:
    """The body of ``api/v1/task-stream?format=compact``: no keys, and the runs as
    columns of small integers (prefix and worker as indices, times in milliseconds).

    Columns rather than an array per run: a third less work to build and encode (about
    0.8 us a run on the development machine, against 1.2 us for arrays per run and
    3.5 us for the full form), a sixth fewer bytes, and nothing per run for the page to
    allocate. With ``merge_ms`` (the page's: the time one pixel spans), runs of one
    prefix on one worker that follow each other within that gap travel as one, with
    their ``count``: at thousands of runs a second the answer shrinks to what the page
    can draw, and encoding it, sending it and parsing it in the browser with it."""
    count, skipped, runs = _runs(d, since, limit)
    chosen = list(runs)
    t0 = min((run[3] for run in chosen), default=0.0)
    prefix_at: dict[str, int] = {}  # index of each prefix in "prefixes"
    worker_at: dict[str, int] = {}
    if merge_ms is None:
        tasks: dict[str, list[int]] = {
            "prefix": [prefix_at.setdefault(run[0], len(prefix_at)) for run in chosen],
            "worker": [worker_at.setdefault(run[2], len(worker_at)) for run in chosen],
            "start": [round((run[3] - t0) * 1000) for run in chosen],
            "duration": [round((run[4] - run[3]) * 1000) for run in chosen],
            # the runs that raised, by index (few: a column of flags would cost every run)
            "erred": [j for j, run in enumerate(chosen) if run[5]],
        }
    else:
        tasks = _merged(chosen, t0, merge_ms / 1000, prefix_at, worker_at)
    return {
        "next": count,
        "skipped": max(skipped, 0),
        "t0": t0,
        "tasks": tasks,
        # after the columns: they fill the indices
        "prefixes": list(prefix_at),
        "workers": list(worker_at),
    }


def _merged(
    runs: list[Run],
    t0: float,
    gap: float,
    prefix_at: dict[str, int],
    worker_at: dict[str, int],
) -> dict[str, list[int]]:
    """Runs as merged spans: one per stretch of a prefix's runs on a worker with no
    pause longer than ``gap`` seconds (a run that raised stays alone)."""
    prefixes: list[str] = []
    workers: list[int] = []
    starts: list[float] = []
    stops: list[float] = []
    counts: list[int] = []
    erred: list[int] = []
    last: dict[str, int] = {}  # worker address -> its latest span that did not raise
    for prefix, _key, worker, start, stop, failed in runs:
        j = last.get(worker)
        if j is not None and not failed and prefixes[j] == prefix and start <= stops[j] + gap:
            if stop > stops[j]:
                stops[j] = stop
            if start < starts[j]:
                starts[j] = start
            counts[j] += 1
            continue
        if failed:
            erred.append(len(prefixes))
        else:
            last[worker] = len(prefixes)
        prefixes.append(prefix)
        workers.append(worker_at.setdefault(worker, len(worker_at)))
        starts.append(start)
        stops.append(stop)
        counts.append(1)
    return {
        "prefix": [prefix_at.setdefault(p, len(prefix_at)) for p in prefixes],
        "worker": workers,
        "start": [round((b - t0) * 1000) for b in starts],
        "duration": [round((e - b) * 1000) for b, e in zip(starts, stops, strict=True)],
        "count": counts,
        "erred": erred,
    }


def snapshot(
    d: Dashboard, since: int, limit: int | None = None, merge_ms: float | None = None
) -> dict[str, Any]:
    """The body of ``api/v1/snapshot``: the four others in one answer (the page's)."""
    return {
        "status": status(d),
        "workers": workers(d),
        "prefixes": prefixes(d),
        "task_stream": task_stream_compact(d, since, limit, merge_ms),
    }


def merge_query(request: web.Request) -> float | None:
    """``merge_ms`` from a request's query: None, or a finite number >= 0 (HTTP 400 if
    invalid)."""
    text = request.query.get("merge_ms")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:
        raise web.HTTPBadRequest(text="merge_ms must be a number of milliseconds >= 0")
    return value


def stream_query(request: web.Request) -> tuple[int, int | None]:
    """``since`` and ``limit`` from a request's query (HTTP 400 if invalid)."""
    query = request.query
    try:
        since = int(query.get("since", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text="since must be an integer") from None
    limit: int | None = None
    if "limit" in query:
        try:
            limit = int(query["limit"])
        except ValueError:
            limit = -1
        if limit < 0:
            raise web.HTTPBadRequest(text="limit must be an integer >= 0")
    return since, limit


def add_routes(app: web.Application, d: Dashboard, static: Path) -> None:
    """Route the page, its files, the API and the metrics under ``d.prefix``."""
    p = d.prefix
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SchedulerCollector(d))

    async def get_status(request: web.Request) -> web.Response:
        return json_response(status(d))

    async def get_workers(request: web.Request) -> web.Response:
        return json_response(workers(d))

    async def get_prefixes(request: web.Request) -> web.Response:
        return json_response(prefixes(d))

    async def get_task_stream(request: web.Request) -> web.Response:
        since, limit = stream_query(request)
        form = request.query.get("format", "full")
        if form == "compact":
            return json_response(task_stream_compact(d, since, limit, merge_query(request)))
        if form != "full":
            raise web.HTTPBadRequest(text="format must be full or compact")
        return json_response(task_stream(d, since, limit))

    async def get_snapshot(request: web.Request) -> web.Response:
        return json_response(snapshot(d, *stream_query(request), merge_query(request)))

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
    app.router.add_get(p + "api/v1/snapshot", get_snapshot)
    app.router.add_get(p + "metrics", get_metrics)
    app.router.add_static(p + "static", static)
