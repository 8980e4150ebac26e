#!/usr/bin/env python3
"""TLS against plain TCP on a whole cluster: round-trip latency and a worker-to-worker
transfer, the workloads of ``run.py``, on two LocalClusters of the same shape (2 worker
processes under nannies, 1 thread each, every server on 127.0.0.1), one over ``tcp://``
and one with ``security=True`` (``tls://``, temporary credentials).

Run from the repository root::

    python benchmarks/bench_tls_cluster.py [--rounds 5] [--trips 200] [--megabytes 200]

Both clusters stay up; the measurements alternate between them (ABBA), so that the
machine's drifts fall on both. Prints each measurement, then medians with their ranges
and the TLS/TCP ratios. Results are checked; nothing passes or fails on a time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# workers import the task functions by reference, like a user's library
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
)
sys.path.insert(0, str(HERE))

from bench_tasks import inc, make_random  # noqa: E402
from workloads import _timed_fetch  # noqa: E402

from conveyor import Client, LocalCluster  # noqa: E402


def latency_ms(client: Any, trips: int) -> float:
    """Milliseconds per submit-and-wait round trip of a tiny task."""
    start = time.perf_counter()
    for i in range(trips):
        got = client.submit(inc, i, pure=False).result(timeout=30)
        if got != i + 1:
            raise RuntimeError(f"inc({i}) returned {got!r}")
    return (time.perf_counter() - start) / trips * 1e3


def transfer_mb_s(client: Any, megabytes: int, seed: int) -> float:
    """MB/s of one fetch of ``megabytes`` of random data from worker A to worker B."""
    a, b = sorted(client.scheduler_info()["workers"])[:2]
    big = client.submit(make_random, megabytes * 1_000_000 // 8, seed, workers=[a], pure=False)
    nbytes, seconds = _timed_fetch(client, big, a, b)
    return nbytes / 1e6 / seconds


def spread(values: list[float], fmt: str) -> str:
    """``median [min-max]``."""
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def main(rounds: int, trips: int, megabytes: int) -> int:
    shape: dict[str, Any] = {
        "n_workers": 2,
        "threads_per_worker": 1,
        "host": "127.0.0.1",
        "dashboard_address": None,
    }
    figures: dict[str, dict[str, list[float]]] = {
        mode: {"latency": [], "transfer": []} for mode in ("tcp", "tls")
    }
    with contextlib.ExitStack() as stack:
        clients = {}
        for mode in ("tcp", "tls"):
            cluster = stack.enter_context(LocalCluster(security=mode == "tls", **shape))
            client = stack.enter_context(Client(cluster, set_as_default=False))
            if not cluster.scheduler_address.startswith(f"{mode}://"):
                raise RuntimeError(f"{mode} cluster listens at {cluster.scheduler_address}")
            client.gather(client.map(inc, range(200), pure=False))  # warm up
            transfer_mb_s(client, 1, 0)  # connects worker A to worker B
            clients[mode] = client
        order = ["tcp", "tls", "tls", "tcp"]
        for r in range(rounds * 2):
            mode = order[r % 4]
            c = clients[mode]
            lat = latency_ms(c, trips)
            rate = transfer_mb_s(c, megabytes, r)
            figures[mode]["latency"].append(lat)
            figures[mode]["transfer"].append(rate)
            print(f"round {r + 1:2d} {mode}: {lat:6.2f} ms/trip {rate:8.0f} MB/s", file=sys.stderr)
    tcp, tls = figures["tcp"], figures["tls"]
    for name, unit, fmt in (("latency", "ms", ".2f"), ("transfer", "MB/s", ".0f")):
        print(f"{name:8s} tcp {spread(tcp[name], fmt)} {unit}, tls {spread(tls[name], fmt)} {unit}")
    lat_ratio = statistics.median(tls["latency"]) / statistics.median(tcp["latency"])
    rate_ratio = statistics.median(tls["transfer"]) / statistics.median(tcp["transfer"])
    print(f"TLS/TCP: latency x{lat_ratio:.2f}, transfer x{rate_ratio:.2f} (medians)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each mode")
    parser.add_argument("--trips", type=int, default=200, help="round trips a measurement")
    parser.add_argument("--megabytes", type=int, default=200, help="bytes a transfer moves")
    args = parser.parse_args()
    sys.exit(main(args.rounds, args.trips, args.megabytes))
