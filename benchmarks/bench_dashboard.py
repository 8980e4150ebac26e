#!/usr/bin/env python3
"""The dashboard's cost: map throughput with the page open in headless Chromium vs closed.

Run from the repository root (needs Debian's ``chromium``)::

    python benchmarks/bench_dashboard.py [--tasks 30000] [--rounds 5] [--system both]

One LocalCluster (2 worker processes, 1 thread each, dashboard on 127.0.0.1, every server
on 127.0.0.1) runs ``client.map(inc, ...)`` in rounds that alternate (ABBA order) between
"closed" (no browser running at all) and "open" (a headless Chromium showing the live
page, started before the round and closed after it, so its cost is included). Every
round starts once the scheduler has forgotten the previous round's tasks, after a pause
of a second. Prints each round's throughput and the CPU the benchmark's own process (the
scheduler and the client) spent per task, the medians with their ranges, Chromium's CPU
and the cost: ``1 - open / closed``. ``--system distributed`` (or ``both``, one after
the other in one run) measures distributed's Bokeh dashboard the same way (its /status
page; a fifteenth of the tasks a round, for its slower rate). Correctness is checked
(every round verifies its results); nothing here passes or fails on a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# workers import the task function by reference, like a user's library
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
)

import psutil  # noqa: E402
from bench_tasks import inc  # noqa: E402

from conveyor import Client  # noqa: E402
from conveyor.deploy.local import LocalCluster  # noqa: E402
from conveyor.testing.browser import Browser, chromium_path  # noqa: E402


async def page_live(browser: Browser, workers: int, timeout: float = 30.0) -> None:
    """Wait until the page shows the cluster's workers: it is polling the API."""
    deadline = time.monotonic() + timeout
    expr = "(document.getElementById('workers-count') || {}).textContent"
    while await browser.evaluate(expr) != str(workers):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the dashboard page never showed {workers} workers")
        await asyncio.sleep(0.05)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` and its live descendants so far."""
    if pid is None:
        return 0.0
    total = 0.0
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


async def one_round(client: Any, n: int, offset: int, cpu: list[float] | None = None) -> float:
    """Tasks per second for ``n`` independent ``inc`` tasks, results checked; appends
    to ``cpu`` this process's CPU microseconds per task (the scheduler and the client
    run here: a figure that other jobs on the machine disturb less than throughput)."""
    cpu0 = time.process_time()
    start = time.perf_counter()
    futures = client.map(inc, range(offset, offset + n), pure=False)
    out = await client.gather(futures)
    elapsed = time.perf_counter() - start
    if cpu is not None:
        cpu.append((time.process_time() - cpu0) / n * 1e6)
    if out != list(range(offset + 1, offset + n + 1)):
        raise RuntimeError("map: wrong results")
    del futures
    return n / elapsed


async def settle(cluster: Any, pause: float = 1.0) -> None:
    """Wait until the scheduler has forgotten the previous round's tasks, then ``pause``
    seconds: every round starts from the same quiet state. (Without it, a round right
    after another shares the CPU with the clean-up of the last one, while a round after
    a browser's start does not: that favoured "open" by about 10%.)"""
    s = cluster.scheduler
    deadline = time.monotonic() + 60
    while s is not None and s.tasks and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(pause)


def spread(values: list[float]) -> str:
    """``median [min-max]``, rounded."""
    return f"{statistics.median(values):.0f} [{min(values):.0f}-{max(values):.0f}]"


@contextlib.asynccontextmanager
async def cluster_and_client(system: str) -> AsyncIterator[tuple[Any, Any, str]]:
    """A 2-process cluster of ``system`` with its dashboard on 127.0.0.1, an
    asynchronous client, and the URL of the page to open."""
    if system == "conveyor":
        async with (
            LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                dashboard_address="127.0.0.1:0",
                asynchronous=True,
            ) as cluster,
            Client(cluster, asynchronous=True) as client,
        ):
            assert cluster.dashboard_link is not None
            yield cluster, client, cluster.dashboard_link
        return
    import distributed

    async with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            asynchronous=True,
        ) as dcluster,
        distributed.Client(dcluster, asynchronous=True) as dclient,
    ):
        yield dcluster, dclient, dcluster.dashboard_link  # its /status page


async def distributed_page_live(browser: Browser, timeout: float = 60.0) -> None:
    """Wait until distributed's Bokeh page has rendered its documents."""
    deadline = time.monotonic() + timeout
    expr = "!!(window.Bokeh && Bokeh.documents && Bokeh.documents.length)"
    while not await browser.evaluate(expr):
        if time.monotonic() > deadline:
            raise RuntimeError("distributed's dashboard page never rendered")
        await asyncio.sleep(0.05)


async def measure(system: str, n: int, rounds: int) -> float:
    """Rounds of ``n`` tasks, page closed and open in ABBA order; prints the figures
    and returns the cost (a fraction of map throughput)."""
    async with cluster_and_client(system) as (cluster, client, link):
        await one_round(client, min(n, 1000), 0)  # warm up
        figures: dict[str, list[float]] = {"closed": [], "open": []}
        own_cpu: dict[str, list[float]] = {"closed": [], "open": []}
        browser_cpu: list[float] = []
        order = ["closed", "open", "open", "closed"]
        for r in range(rounds * 2):
            mode = order[r % 4]
            if mode == "open":
                async with Browser() as browser:
                    await browser.goto(link)
                    if system == "conveyor":
                        await page_live(browser, 2)
                    else:
                        await distributed_page_live(browser)
                    # the browser's start-up work (its processes, parsing the page) is
                    # over after a few seconds: what is measured is a page kept open
                    await settle(cluster, pause=3.0)
                    cpu0, t0 = cpu_seconds(browser.pid), time.perf_counter()
                    rate = await one_round(client, n, r * n, own_cpu[mode])
                    share = (cpu_seconds(browser.pid) - cpu0) / (time.perf_counter() - t0)
                    browser_cpu.append(share)
                    if browser.errors and system == "conveyor":
                        raise RuntimeError(f"JavaScript errors: {browser.errors}")
            else:
                await settle(cluster)
                rate = await one_round(client, n, r * n, own_cpu[mode])
            figures[mode].append(rate)
            print(
                f"{system} round {r + 1:2d} {mode:6s} {rate:10.0f} tasks/s"
                f" {own_cpu[mode][-1]:6.1f} us CPU/task (scheduler + client)",
                file=sys.stderr,
            )
    closed = statistics.median(figures["closed"])
    opened = statistics.median(figures["open"])
    cost = 1 - opened / closed
    # each ABBA block compares neighbours in time: slow drifts of the machine cancel
    blocks = [
        1
        - (figures["open"][2 * i] + figures["open"][2 * i + 1])
        / (figures["closed"][2 * i] + figures["closed"][2 * i + 1])
        for i in range(len(figures["open"]) // 2)
    ]
    print(f"{system}: {n} tasks a round, {rounds} rounds of each mode")
    print(f"  map throughput, page closed: {spread(figures['closed'])} tasks/s (median [range])")
    print(f"  map throughput, page open:   {spread(figures['open'])} tasks/s (median [range])")
    cpu_closed = statistics.median(own_cpu["closed"])
    cpu_open = statistics.median(own_cpu["open"])
    print(
        f"  scheduler + client CPU per task: closed {cpu_closed:.1f} us, open {cpu_open:.1f} us"
        f" (median): {100 * (cpu_open / cpu_closed - 1):+.1f}%"
    )
    cpu = statistics.median(browser_cpu)
    print(f"  chromium's CPU while the page is open: {100 * cpu:.0f}% of one core (median)")
    print(f"  dashboard cost: {100 * cost:.1f}% of map throughput (ratio of medians)")
    if blocks:
        print(
            f"  per ABBA block: median {100 * statistics.median(blocks):.1f}% "
            f"[{100 * min(blocks):.1f}% to {100 * max(blocks):.1f}%] over {len(blocks)} blocks"
        )
    return cost


async def main(n: int, rounds: int, systems: list[str]) -> int:
    if chromium_path() is None:
        print("chromium is not installed", file=sys.stderr)
        return 2
    costs = {}
    for system in systems:
        # distributed runs about 30 times fewer tasks a second: fewer tasks a round
        costs[system] = await measure(system, n if system == "conveyor" else n // 15, rounds)
    if len(costs) == 2:
        print(
            f"dashboard cost: conveyor {100 * costs['conveyor']:.1f}%, "
            f"distributed {100 * costs['distributed']:.1f}% of map throughput"
        )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=30000, help="tasks per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each mode")
    parser.add_argument(
        "--system",
        choices=["conveyor", "distributed", "both"],
        default="conveyor",
        help="whose dashboard (distributed's needs bokeh)",
    )
    args = parser.parse_args()
    chosen = ["conveyor", "distributed"] if args.system == "both" else [args.system]
    sys.exit(asyncio.run(main(args.tasks, args.rounds, chosen)))
