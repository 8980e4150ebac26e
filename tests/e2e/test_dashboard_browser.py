"""The dashboard page in a real headless Chromium, driven over the DevTools protocol.

One test runs the page against the real scheduler of a LocalCluster while it computes;
one runs it against a small stub API with canned answers, to check what the page draws
from known numbers and that it shows "disconnected" when the API fails, then recovers.
Screenshots go to ``$CONVEYOR_TEST_ARTIFACTS`` (default: ``test-artifacts/``).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import conveyor.server
from conveyor import Client
from conveyor.deploy.local import LocalCluster
from conveyor.testing.browser import Browser, chromium_path

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed"),
]

STATIC = Path(conveyor.server.__file__).parent / "dashboard" / "static"
REPO = Path(__file__).resolve().parents[2]


def artifacts_dir() -> Path:
    """Where screenshots go: ``$CONVEYOR_TEST_ARTIFACTS`` or ``<repo>/test-artifacts``."""
    return Path(os.environ.get("CONVEYOR_TEST_ARTIFACTS") or REPO / "test-artifacts")


async def wait_js(browser: Browser, expression: str, expected: Any, timeout: float = 15.0) -> Any:
    """Evaluate ``expression`` until it returns ``expected`` (bounded); return the last
    value. The page announces nothing, so this polls like ``testing.cluster.until``."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await browser.evaluate(expression)
        if value == expected:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"{expression} is {value!r}, expected {expected!r} (errors: {browser.errors})"
    )


def text(selector: str) -> str:
    """A JavaScript expression: the text of the element ``selector`` selects, or null."""
    sel = json.dumps(selector)
    return f"(document.querySelector({sel}) || {{textContent: null}}).textContent"


#: milliseconds between the page's successive requests for api/v1/snapshot
POLL_GAPS = (
    "(() => { const t = performance.getEntriesByType('resource')"
    ".filter(e => e.name.includes('api/v1/snapshot')).map(e => e.startTime);"
    " return t.slice(1).map((x, i) => x - t[i]); })()"
)

#: every resource the page loaded came from its own origin
SAME_ORIGIN = (
    "performance.getEntriesByType('resource')"
    ".every(e => new URL(e.name).origin === location.origin)"
)


def test_dashboard_against_real_scheduler() -> None:
    """The page on a LocalCluster's scheduler: right worker count, the computation's
    prefix reaches 100%, the task stream draws, and no JavaScript error."""

    async def main() -> None:
        async with (
            LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                dashboard_address="127.0.0.1:0",
                asynchronous=True,
            ) as cluster,
            Client(cluster, asynchronous=True) as client,
            Browser() as browser,
        ):
            link = cluster.dashboard_link
            assert link is not None and link.startswith("http://127.0.0.1:")
            await browser.goto(link)
            await wait_js(browser, text("#workers-count"), "2")
            await wait_js(browser, "document.querySelectorAll('#workers tbody tr').length", 2)
            await wait_js(
                browser, "document.getElementById('connection').dataset.state", "connected"
            )

            futures = client.map(time.sleep, [0.01] * 200, pure=False)
            assert await client.gather(futures) == [None] * 200

            await wait_js(browser, text('[data-prefix="sleep"] .done-percent'), "100%")
            assert await browser.evaluate(text('[data-prefix="sleep"] .counts')) == "200 / 200"
            tasks = await wait_js(
                browser, "Number(document.getElementById('task-stream').dataset.tasks) > 0", True
            )
            assert tasks
            assert (
                await browser.evaluate("document.getElementById('stream-legend').dataset.prefixes")
                == "sleep"
            )
            assert await browser.evaluate(SAME_ORIGIN)
            # it polled at least once a second all along (the page asks every second,
            # timed from the start of the previous request; slack for a loaded machine)
            gaps = await browser.evaluate(POLL_GAPS)
            assert len(gaps) >= 2 and statistics.median(gaps) <= 1100 and max(gaps) <= 2000
            await browser.screenshot(artifacts_dir() / "dashboard.png")
            assert browser.errors == []

    asyncio.run(main())


# -- the page against a stub API --------------------------------------------------------

STATUS = {
    "scheduler": "tcp://127.0.0.1:8786",
    "workers": 3,
    "threads": 6,
    "tasks": 400,
    "states": {"memory": 300, "processing": 50, "waiting": 50},
    "loop_lag_ms": 1.25,
    "uptime": 42.0,
}
WORKERS = [
    {
        "address": f"tcp://127.0.0.1:{4000 + i}",
        "name": f"w{i}",
        "nthreads": 2,
        "status": "running",
        "cpu": 50.0 * i,
        "memory": {"managed": 1 << 28, "unmanaged": 1 << 27, "spilled": 0, "limit": 1 << 30},
        "processing": 4,
        "executing": 2,
    }
    for i in range(3)
]
PREFIXES = [
    {
        "prefix": "inc",
        "waiting": 40,
        "queued": 0,
        "no-worker": 10,
        "processing": 50,
        "memory": 290,
        "erred": 10,
        "released": 0,
        "total": 400,
    }
]


@asynccontextmanager
async def stub_api(http_prefix: str) -> AsyncIterator[dict[str, Any]]:
    """Serve the static page and canned API answers under ``http_prefix``; the yielded
    dict has ``url`` and a ``fail`` switch that makes every API call answer 503."""
    control: dict[str, Any] = {"fail": False, "stream_calls": 0, "stream_queries": []}
    t0 = time.time()

    def api(payload: Any) -> Any:
        async def handler(request: web.Request) -> web.Response:
            if control["fail"]:
                return web.Response(status=503)
            return web.json_response(payload(request) if callable(payload) else payload)

        return handler

    def snapshot(request: web.Request) -> dict[str, Any]:
        # the task stream in the compact form: a run on each worker, the last second
        control["stream_queries"].append(dict(request.query))
        control["stream_calls"] += 1
        now = time.time()
        n = len(WORKERS) if now - t0 < 5 else 0
        stream = {
            "next": control["stream_calls"],
            "skipped": 0,
            "t0": now - 1,
            "tasks": {
                "prefix": [0] * n,
                "worker": list(range(n)),
                "start": [0] * n,
                "duration": [1000] * n,
            },
            "prefixes": ["inc"],
            "workers": [w["address"] for w in WORKERS],
        }
        return {"status": STATUS, "workers": WORKERS, "prefixes": PREFIXES, "task_stream": stream}

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    app = web.Application()
    app.router.add_get(http_prefix, index)
    app.router.add_static(http_prefix + "static/", STATIC)
    app.router.add_get(http_prefix + "api/v1/snapshot", api(snapshot))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        control["url"] = f"http://127.0.0.1:{port}{http_prefix}"
        yield control
    finally:
        await runner.cleanup()


def test_dashboard_page_renders_known_numbers_and_disconnection() -> None:
    """Canned API answers under an http prefix: the header, worker rows, memory bars and
    the prefix progress show them; a failing API shows "disconnected", then recovers."""

    async def main() -> None:
        async with stub_api("/prefix/") as api, Browser() as browser:
            await browser.goto(api["url"])
            await wait_js(browser, text("#workers-count"), "3")
            assert await browser.evaluate(text("#scheduler-address")) == STATUS["scheduler"]
            assert await browser.evaluate(text("#threads-count")) == "6"
            assert await browser.evaluate(text("#tasks-count")) == "400"
            assert await browser.evaluate(text("#loop-lag")) == "1.3 ms"
            rows = "Array.from(document.querySelectorAll('#workers tbody tr'))"
            await wait_js(
                browser, f"{rows}.map(r => r.dataset.worker)", [w["address"] for w in WORKERS]
            )
            widths = (
                "Array.from(document.querySelectorAll("
                "'#workers tbody tr:first-child .mem .bar span'))"
                ".map(s => s.dataset.width)"
            )
            assert await browser.evaluate(widths) == ["25.00%", "12.50%", "0.00%"]
            # done = everything not waiting/queued/processing: 300 of 400
            await wait_js(browser, text('[data-prefix="inc"] .done-percent'), "75%")
            assert await browser.evaluate(text('[data-prefix="inc"] .counts')) == "300 / 400"
            # every state's count, in the bar's order (no-worker tasks count as waiting)
            assert (
                await browser.evaluate(text('[data-prefix="inc"] .states'))
                == "290 in memory · 50 processing · 50 waiting · 10 erred"
            )
            label = text("#workers tbody tr:first-child .mem .label")
            assert (
                await browser.evaluate(label)
                == "256.0 MiB managed + 128.0 MiB unmanaged / 1.0 GiB, 0 B spilled"
            )
            await wait_js(
                browser, "Number(document.getElementById('task-stream').dataset.tasks) > 0", True
            )
            await wait_js(
                browser, "document.getElementById('connection').dataset.state", "connected"
            )
            legend = "document.getElementById('stream-legend').dataset.prefixes"
            assert await browser.evaluate(legend) == "inc"  # the prefix drawn, named
            await browser.screenshot(artifacts_dir() / "dashboard-stub.png")

            api["fail"] = True
            await wait_js(browser, text("#connection"), "disconnected")
            api["fail"] = False
            await wait_js(browser, text("#connection"), "connected", timeout=20)
            assert await browser.evaluate(SAME_ORIGIN)
            # the page read the task stream a bounded number of runs at a time, each poll
            # from where the last answered one ended
            queries = api["stream_queries"]
            assert len(queries) >= 2
            assert {q["limit"] for q in queries} == {"10000"}
            # and asked the scheduler to merge runs closer than a pixel of the stream
            assert all(1 <= float(q["merge_ms"]) <= 1000 for q in queries)
            assert [q["since"] for q in queries] == [str(i) for i in range(len(queries))]
            # the 503s themselves are logged by the browser as failed loads, not JS errors
            assert [e for e in browser.errors if "503" not in e] == []

    asyncio.run(main())
