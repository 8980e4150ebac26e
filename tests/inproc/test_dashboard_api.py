"""The scheduler's dashboard over HTTP: the JSON API, /metrics, the page, the port
fallback, ``http_prefix``, and ``dashboard=False``."""

from __future__ import annotations

import asyncio
import gc
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Client
from conveyor.server.dashboard import Dashboard
from conveyor.server.dashboard.service import link_host, normalize_prefix, parse_address
from conveyor.server.scheduler import Scheduler
from conveyor.server.worker import Worker
from conveyor.testing.cluster import in_process_cluster, until

Body = Callable[[Scheduler, list[Worker], Client, aiohttp.ClientSession], Awaitable[None]]


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return 2 * x


def fail(x: int) -> int:
    raise ValueError(x)


def run(body: Body, **scheduler_kwargs: Any) -> None:
    kwargs = {"dashboard": True, "dashboard_address": "127.0.0.1:0", **scheduler_kwargs}

    async def main() -> None:
        async with (
            in_process_cluster(n_workers=2, scheduler_kwargs=kwargs) as (s, workers, c),
            aiohttp.ClientSession() as http,
        ):
            await body(s, workers, c, http)

    asyncio.run(main())


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as r:
        assert r.status == 200, (url, r.status)
        assert r.content_type == "application/json"
        return await r.json()


def test_api_reports_workers_prefixes_and_task_stream() -> None:
    async def body(
        s: Scheduler, workers: list[Worker], c: Client, http: aiohttp.ClientSession
    ) -> None:
        link = s.dashboard_link
        assert link is not None and re.fullmatch(r"http://127\.0\.0\.1:\d+/", link)
        assert c.dashboard_link == link  # a client connected by address learns it too
        incs = c.map(inc, range(30))
        doubles = c.map(double, incs)
        errs = c.map(fail, range(3))
        assert await c.gather(doubles) == [2 * (i + 1) for i in range(30)]
        for f in errs:
            with pytest.raises(ValueError):
                await f
        addresses = {w.address for w in workers}
        # every worker has sent a heartbeat with its memory since the work ended
        await until(lambda: all("memory" in ws.metrics for ws in s.state.workers.values()))

        status = await get_json(http, link + "api/v1/status")
        assert status["scheduler"] == s.address
        assert (status["workers"], status["threads"], status["tasks"]) == (2, 2, 63)
        assert status["states"]["memory"] == 60 and status["states"]["erred"] == 3
        assert sum(status["states"].values()) == 63
        assert status["loop_lag_ms"] >= 0 and status["uptime"] >= 0

        ws_json = await get_json(http, link + "api/v1/workers")
        assert {w["address"] for w in ws_json} == addresses
        assert {w["name"] for w in ws_json} == {"w0", "w1"}
        for w in ws_json:
            assert w["nthreads"] == 1 and w["status"] == "running"
            assert w["processing"] == 0 and w["executing"] == 0
            assert w["memory"]["managed"] > 0 and w["memory"]["unmanaged"] > 0
            assert w["memory"]["spilled"] == 0 and w["memory"]["limit"] > 0
            assert w["cpu"] >= 0
        assert sum(w["memory"]["managed"] for w in ws_json) == sum(
            w.data.fast_bytes for w in workers
        )

        rows = {r["prefix"]: r for r in await get_json(http, link + "api/v1/prefixes")}
        assert set(rows) == {"inc", "double", "fail"}
        expected: dict[str, dict[str, int]] = {}
        for ts in s.state.tasks.values():
            per = expected.setdefault(ts.prefix.name, {})
            per[ts.state] = per.get(ts.state, 0) + 1
        for name, row in rows.items():
            counts = {k: v for k, v in row.items() if k not in ("prefix", "total", "forgotten")}
            assert {k: v for k, v in counts.items() if v} == expected[name]
            assert row["total"] == sum(expected[name].values())
        assert rows["inc"]["memory"] == 30 and rows["fail"]["erred"] == 3

        stream = await get_json(http, link + "api/v1/task-stream")
        # 60 runs and the 3 failed ones, marked
        assert stream["next"] == 63 == len(stream["tasks"])
        ok = [t for t in stream["tasks"] if t["status"] == "OK"]
        assert {t["key"] for t in ok} == {f.key for f in incs + doubles} and len(ok) == 60
        assert {t["prefix"] for t in stream["tasks"] if t["status"] == "error"} == {"fail"}
        assert {t["worker"] for t in stream["tasks"]} <= addresses
        assert all(t["start"] <= t["stop"] for t in stream["tasks"])
        later = await get_json(http, link + "api/v1/task-stream?since=55")
        assert later["next"] == 63 and later["tasks"] == stream["tasks"][55:]
        assert (await get_json(http, link + "api/v1/task-stream?since=63"))["tasks"] == []
        compact = await get_json(http, link + "api/v1/task-stream?format=compact")
        failed = compact["tasks"]["erred"]
        assert len(failed) == 3
        assert {compact["prefixes"][compact["tasks"]["prefix"][j]] for j in failed} == {"fail"}
        async with http.get(link + "api/v1/task-stream?since=x") as r:
            assert r.status == 400

        # released results: their tasks are forgotten and leave the live counts
        del doubles, errs, f
        gc.collect()  # the caught errors' tracebacks hold futures in reference cycles
        await until(
            lambda: all(ts.prefix.name == "inc" for ts in s.state.tasks.values()),
            what=str([ts for ts in s.state.tasks.values() if ts.prefix.name != "inc"][:4]),
        )
        rows = {r["prefix"]: r for r in await get_json(http, link + "api/v1/prefixes")}
        assert rows["double"]["total"] == 0 and rows["double"]["forgotten"] == 30
        assert rows["fail"]["total"] == 0 and rows["fail"]["forgotten"] == 3
        status = await get_json(http, link + "api/v1/status")
        assert status["tasks"] == len(s.state.tasks) == sum(status["states"].values())

    run(body)


def test_task_stream_limit_and_compact_form() -> None:
    """``limit`` keeps the newest runs and counts the rest as skipped; the compact form
    (the page's) holds the same runs in a fraction of the bytes."""

    async def body(
        s: Scheduler, workers: list[Worker], c: Client, http: aiohttp.ClientSession
    ) -> None:
        stream = s.dashboard_link + "api/v1/task-stream"
        assert await c.gather(c.map(inc, range(30))) == list(range(1, 31))
        full = await get_json(http, stream)
        runs = full["tasks"]
        assert (full["next"], full["skipped"], len(runs)) == (30, 0, 30)
        for query, expected, skipped in [
            ("?limit=5", runs[-5:], 25),
            ("?since=20&limit=5", runs[-5:], 5),
            ("?since=28&limit=5", runs[28:], 0),
            ("?since=10", runs[10:], 0),
            ("?limit=0", [], 30),
            ("?since=30&limit=0", [], 0),
        ]:
            answer = await get_json(http, stream + query)
            assert answer == {"next": 30, "skipped": skipped, "tasks": expected}, query
        for query in ("?limit=-1", "?limit=x", "?format=xml"):
            async with http.get(stream + query) as r:
                assert r.status == 400, query

        async with http.get(stream) as r:
            full_bytes = len(await r.read())
        async with http.get(stream + "?format=compact") as r:
            compact_bytes = len(await r.read())
        compact = await get_json(http, stream + "?format=compact")
        assert (compact["next"], compact["skipped"]) == (30, 0)
        assert compact["prefixes"] == ["inc"]
        assert set(compact["workers"]) == {w.address for w in workers}
        t0 = compact["t0"]
        assert t0 == min(r["start"] for r in runs)
        columns = compact["tasks"]
        assert set(columns) == {"prefix", "worker", "start", "duration", "erred"}
        assert columns["erred"] == []  # no run raised
        rows = zip(*(columns[c] for c in ("prefix", "worker", "start", "duration")), strict=True)
        for (p, w, start, duration), run in zip(rows, runs, strict=True):
            assert all(isinstance(x, int) for x in (p, w, start, duration))
            assert compact["prefixes"][p] == run["prefix"]
            assert compact["workers"][w] == run["worker"]
            assert abs(t0 + start / 1000 - run["start"]) <= 0.0005 + 1e-9
            assert abs(duration / 1000 - (run["stop"] - run["start"])) <= 0.0005 + 1e-9
        assert compact_bytes * 5 < full_bytes  # the page's traffic per task, several-fold
        newest = await get_json(http, stream + "?format=compact&since=20&limit=3")
        assert (newest["next"], newest["skipped"]) == (30, 7)
        assert [newest["workers"][w] for w in newest["tasks"]["worker"]] == [
            r["worker"] for r in runs[-3:]
        ]
        empty = await get_json(http, stream + "?format=compact&since=30")
        assert empty["tasks"] == {
            "prefix": [],
            "worker": [],
            "start": [],
            "duration": [],
            "erred": [],
        }
        assert empty["prefixes"] == [] and empty["next"] == 30

        # the page's one request: the four answers in one, the stream in compact form
        snap = await get_json(http, s.dashboard_link + "api/v1/snapshot?since=20&limit=3")
        assert set(snap) == {"status", "workers", "prefixes", "task_stream"}
        assert snap["task_stream"] == newest
        assert (snap["status"]["workers"], snap["status"]["tasks"]) == (2, len(s.state.tasks))
        assert [w["address"] for w in snap["workers"]] == sorted(w.address for w in workers)
        assert snap["prefixes"] == await get_json(http, s.dashboard_link + "api/v1/prefixes")
        async with http.get(s.dashboard_link + "api/v1/snapshot?since=y") as r:
            assert r.status == 400

        # merged: runs of a prefix on a worker closer than merge_ms travel as one span
        merged = await get_json(http, stream + "?format=compact&merge_ms=100000")
        spans = merged["tasks"]
        assert sum(spans["count"]) == 30 and spans["erred"] == []
        assert len(spans["prefix"]) == len({w.address for w in workers}) == 2
        for j, w in enumerate(spans["worker"]):  # each span covers its worker's runs
            mine = [r for r in runs if r["worker"] == merged["workers"][w]]
            assert spans["count"][j] == len(mine)
            begin = merged["t0"] + spans["start"][j] / 1000
            assert abs(begin - min(r["start"] for r in mine)) <= 0.0005 + 1e-9
        separate = await get_json(http, stream + "?format=compact&merge_ms=0")
        assert sum(separate["tasks"]["count"]) == 30
        for bad in ("-1", "x", "nan"):
            async with http.get(stream + "?format=compact&merge_ms=" + bad) as r:
                assert r.status == 400

    run(body)


def test_metrics_are_prometheus_text() -> None:
    async def body(
        s: Scheduler, workers: list[Worker], c: Client, http: aiohttp.ClientSession
    ) -> None:
        futs = c.map(inc, range(10))
        assert await c.gather(futs) == list(range(1, 11))
        w0, w1 = (w.address for w in workers)
        blob = c.submit(bytes, 100_000, workers=[w0])
        assert await c.submit(len, blob, workers=[w1]) == 100_000  # w1 fetches it from w0
        await until(
            lambda: s.state.workers[w1].metrics.get("transfer_incoming_bytes", 0) >= 100_000
        )
        async with http.get(f"{s.dashboard_link}metrics") as r:
            assert r.status == 200 and r.content_type == "text/plain"
            text = await r.text()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert {
            "conveyor_tasks",
            "conveyor_tasks_forgotten",
            "conveyor_tasks_finished",
            "conveyor_transitions",
            "conveyor_workers",
            "conveyor_threads",
            "conveyor_worker_memory_bytes",
            "conveyor_worker_memory_limit_bytes",
            "conveyor_worker_cpu_percent",
            "conveyor_worker_transfer_incoming_bytes",
            "conveyor_event_loop_lag_seconds",
        } <= set(families)
        values = {
            (x.name, tuple(sorted(x.labels.items()))): x.value
            for f in families.values()
            for x in f.samples
        }
        assert values[("conveyor_tasks", (("prefix", "inc"), ("state", "memory")))] == 10
        assert values[("conveyor_workers", (("status", "running"),))] == 2
        assert values[("conveyor_threads", ())] == 2
        assert values[("conveyor_tasks_finished_total", ())] == 12
        incoming = "conveyor_worker_transfer_incoming_bytes_total"
        assert values[(incoming, (("worker", w1),))] >= 100_000
        assert values[(incoming, (("worker", w0),))] == 0
        kinds = {
            (dict(labels)["worker"], dict(labels)["kind"])
            for name, labels in values
            if name == "conveyor_worker_memory_bytes"
        }
        assert kinds == {
            (w.address, k) for w in workers for k in ("managed", "unmanaged", "spilled")
        }

    run(body)


def test_page_and_static_files_are_served() -> None:
    async def body(
        s: Scheduler, workers: list[Worker], c: Client, http: aiohttp.ClientSession
    ) -> None:
        async with http.get(str(s.dashboard_link)) as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert "<html" in (await r.text()).lower()
        async with http.get(f"{s.dashboard_link}static/index.html") as r:
            assert r.status == 200
        async with http.get(f"{s.dashboard_link}static/../service.py") as r:
            assert r.status in (403, 404)
        async with http.get(f"{s.dashboard_link}api/v1/nothing") as r:
            assert r.status == 404

    run(body)


def test_http_prefix_is_honoured() -> None:
    async def body(
        s: Scheduler, workers: list[Worker], c: Client, http: aiohttp.ClientSession
    ) -> None:
        link = str(s.dashboard_link)
        assert link.endswith("/board/x/")
        assert (await get_json(http, link + "api/v1/status"))["workers"] == 2
        root = link[: -len("board/x/")]
        async with http.get(root + "api/v1/status") as r:
            assert r.status == 404

    run(body, http_prefix="board/x")
    assert normalize_prefix("/a//b") == "/a/b/" and normalize_prefix("") == "/"


def test_a_busy_port_falls_back_to_a_free_one() -> None:
    async def main() -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            async with Scheduler(
                host="127.0.0.1", port=0, dashboard=True, dashboard_address=f":{port}"
            ) as s:
                board = s.services["dashboard"]
                assert board.host == "127.0.0.1"
                assert board.port not in (0, port)
                assert s.dashboard_link == f"http://127.0.0.1:{board.port}/"
                assert s.identity()["services"] == {"dashboard": board.port}
                async with aiohttp.ClientSession() as http:
                    status = await get_json(http, f"{s.dashboard_link}api/v1/status")
                    assert status["scheduler"] == s.address
            assert "dashboard" not in s.services

    asyncio.run(main())


def test_no_dashboard_when_disabled() -> None:
    async def main() -> None:
        async with Scheduler(host="127.0.0.1", port=0, dashboard=False) as s:
            assert s.dashboard_link is None and s.services == {}
            assert s.identity()["services"] == {}

    asyncio.run(main())


def test_addresses_default_to_loopback() -> None:
    assert parse_address(":8787") == ("127.0.0.1", 8787)
    assert parse_address("8787") == ("127.0.0.1", 8787)
    assert parse_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_address("[::1]:9000") == ("::1", 9000)
    assert parse_address("tcp://localhost:1") == ("localhost", 1)


def test_the_link_never_names_a_wildcard_host() -> None:
    """Bound to every interface, the link names the scheduler's contact host, or
    127.0.0.1 when the scheduler has none (in-process, or itself a wildcard)."""
    tcp = "tcp://10.1.2.3:8786"
    for wildcard in ("0.0.0.0", "", "::", "[::]"):
        assert link_host(wildcard, tcp) == "10.1.2.3"
        assert link_host(wildcard, "tcp://[fe80::1]:8786") == "[fe80::1]"
        assert link_host(wildcard, "inproc://10.1.2.3/123/1") == "127.0.0.1"
        assert link_host(wildcard, "tcp://0.0.0.0:8786") == "127.0.0.1"
        assert link_host(wildcard, "") == "127.0.0.1"
        assert link_host(wildcard, None) == "127.0.0.1"
    # a specific host is named as it is, IPv6 bracketed
    assert link_host("127.0.0.1", tcp) == "127.0.0.1"
    assert link_host("localhost", tcp) == "localhost"
    assert link_host("::1", tcp) == "[::1]"


def test_the_dashboard_link_of_a_wildcard_bound_board() -> None:
    """``Dashboard.link`` uses :func:`link_host` (checked without binding: a test binds
    127.0.0.1 only)."""

    async def main() -> None:
        async with Scheduler(host="127.0.0.1", port=0, dashboard=False) as s:
            board = Dashboard(s, "0.0.0.0:8787", "/x")
            board.port = 8787  # what start() would have set
            assert board.link == "http://127.0.0.1:8787/x/"  # s.address is tcp://127.0.0.1
            address, s.address = s.address, "tcp://192.0.2.7:8786"
            assert board.link == "http://192.0.2.7:8787/x/"
            s.address = address
            assert "0.0.0.0" not in Dashboard(s, "[::]:1").link

    asyncio.run(main())


def test_the_dashboard_only_reads() -> None:
    """No route changes the cluster or shows logs: every route answers GET (and HEAD)
    only, and any other method is refused, on every route."""

    async def body(
        s: Scheduler, workers: list[Worker], c: Client, http: aiohttp.ClientSession
    ) -> None:
        board = s.services["dashboard"]
        assert isinstance(board, Dashboard)
        paths = set()
        for route in board.app.router.routes():
            assert route.method in ("GET", "HEAD"), route
            info = route.resource.get_info() if route.resource is not None else {}
            path = info.get("path") or info.get("prefix")
            assert path is not None and "log" not in path, route
            paths.add(path)
        assert len(paths) >= 7
        for path in sorted(paths):
            url = f"{s.dashboard_link}{path.lstrip('/')}"
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                async with http.request(method, url) as r:
                    assert r.status == 405, (method, path, r.status)

    run(body)
