"""``conveyor demo``: a small computation on an embedded local cluster, with progress."""

from __future__ import annotations

import operator
import sys
import time

from conveyor.client.client import Client
from conveyor.diagnostics.progress import progress


def _slow_square(x: int) -> int:
    time.sleep(0.002)
    return x * x


def run_demo(n: int = 2_000, n_workers: int = 2) -> int:
    """Square ``n`` numbers across worker processes, then sum them in a tree; check it."""
    print(f"Starting a local cluster with {n_workers} worker processes ...", flush=True)
    with Client(n_workers=n_workers, threads_per_worker=1, processes=True) as client:
        info = client.scheduler_info()
        print(f"Scheduler: {info['address']}  workers: {len(info['workers'])}")
        print(f"Dashboard: {client.dashboard_link or 'not served'}")
        t0 = time.perf_counter()
        squares = client.map(_slow_square, range(n))
        progress(squares, label="squares", file=sys.stdout)
        level = squares
        while len(level) > 1:
            pairs = [level[i : i + 2] for i in range(0, len(level), 2)]
            level = [client.submit(operator.add, *p) if len(p) == 2 else p[0] for p in pairs]
        total = level[0].result()
        elapsed = time.perf_counter() - t0
        expected = sum(x * x for x in range(n))
        ok = total == expected
        print(f"sum of squares of 0..{n - 1} = {total} ({'correct' if ok else 'WRONG'})")
        print(f"{2 * n - 1} tasks in {elapsed:.2f} s")
        return 0 if ok else 1
