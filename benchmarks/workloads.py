"""The workloads, as run inside the child process of one system.

A child imports one system (``conveyor`` or ``distributed``), runs the workloads it was given
and writes one JSON event per line to its events file: ``phase`` (what it starts, with a time
budget the parent enforces), ``value`` (a measured figure), ``done`` and ``failed``. Every
workload checks its result; a failure is reported and the next workload runs.

``rawsock`` needs no cluster; ``map``, ``latency``, ``array`` and ``transfer`` share one
LocalCluster; each DataFrame workload (``frames.py``) starts a LocalCluster of its own;
``submit`` and ``scale`` start a scheduler and a worker from the command line.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import multiprocessing
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import dask.array as da
import frames
import numpy as np
from bench_tasks import fingerprint, ident, inc, make_random
from catalog import CLUSTER_SHAPE, CLUSTER_WORKLOADS, FRAME_WORKLOADS, Sizes, budget
from dask.base import compute
from processes import BenchError, CliCluster, expect

#: Seconds the root task of ``submit`` sleeps: its dependents wait for it all along.
ROOT_SLEEP = 120.0
#: Threads of the command-line worker: one for the sleeping root, one for the probe task.
CLI_WORKER_THREADS = 2
#: Rounds of the small ``scale`` run; the median counts (the large run is one long round).
SCALE_SMALL_ROUNDS = 3
_SOCKET_TIMEOUT = 60.0


class Runner:
    """Runs workloads on one system and reports events to ``events``."""

    def __init__(self, system: str, quick: bool, events: TextIO, tmpdir: Path) -> None:
        self.system = system
        self.quick = quick
        self.sizes = Sizes.for_mode(quick)
        self.events = events
        self.tmpdir = tmpdir
        self.mod: ModuleType = importlib.import_module(system)

    # -------------------------------------------------------------------- events

    def emit(self, event: str, **fields: Any) -> None:
        self.events.write(json.dumps({"event": event, **fields}) + "\n")
        self.events.flush()

    def phase(self, name: str, covers: list[str]) -> float:
        """Announce a phase (its budget starts now) and return its budget in seconds."""
        limit = budget(name, self.quick)
        self.emit("phase", name=name, covers=covers, budget=limit)
        return limit

    def value(self, key: str, value: float) -> None:
        self.emit("value", key=key, value=value)

    def fail(self, workloads: list[str], error: BaseException | str) -> None:
        reason = error if isinstance(error, str) else _describe(error)
        self.emit("failed", workloads=workloads, reason=reason)

    def attempt(self, workload: str, fn: Callable[[float], None]) -> None:
        """Run ``fn(budget)`` as the phase ``workload``; report done or failed."""
        limit = self.phase(workload, [workload])
        try:
            fn(limit)
        except Exception as e:
            self.fail([workload], e)
        else:
            self.emit("done", workload=workload)

    # ---------------------------------------------------------------------- runs

    def run(self, workloads: list[str]) -> None:
        """Run ``workloads``: rawsock, the LocalCluster ones, the DataFrame ones, the CLI ones."""
        if "rawsock" in workloads:
            self.attempt("rawsock", self.rawsock)
        on_cluster = [w for w in CLUSTER_WORKLOADS if w in workloads]
        if on_cluster:
            self.run_on_local_cluster(on_cluster)
        for w in FRAME_WORKLOADS:
            if w in workloads:
                self.attempt(w, functools.partial(frames.measure, self, w))
        if "submit" in workloads:
            self.attempt("submit", self.submit)
        if "scale" in workloads:
            self.attempt("scale", self.scale)

    def run_on_local_cluster(self, workloads: list[str]) -> None:
        self.phase("setup", workloads)
        with contextlib.ExitStack() as stack:
            try:
                client = self.start_local_cluster(stack)
                _warm_up(client)
            except Exception as e:
                self.fail(workloads, f"cluster setup: {_describe(e)}")
                return
            stack.callback(self.phase, "teardown", [])
            steps: dict[str, Callable[[Any, float], None]] = {
                "map": self.map,
                "latency": self.latency,
                "array": self.array,
                "transfer": self.transfer,
            }
            for w in workloads:
                self.attempt(w, functools.partial(steps[w], client))

    def start_local_cluster(self, stack: contextlib.ExitStack) -> Any:
        """A LocalCluster of the standard shape and a client of it, both closed by ``stack``."""
        cluster = self.mod.LocalCluster(**CLUSTER_SHAPE, host="127.0.0.1")
        stack.callback(_quietly, cluster.close)
        client = self.mod.Client(cluster)
        stack.callback(_quietly, client.close)
        client.wait_for_workers(CLUSTER_SHAPE["n_workers"], timeout=60)
        return client

    @contextlib.contextmanager
    def cli_client(self) -> Iterator[tuple[CliCluster, Any]]:
        """A CLI scheduler and worker in a fresh directory, and a client connected to them."""
        with (
            tempfile.TemporaryDirectory(dir=self.tmpdir) as directory,
            CliCluster(self.system, Path(directory), CLI_WORKER_THREADS) as cluster,
        ):
            client = self.mod.Client(scheduler_file=str(cluster.scheduler_file))
            try:
                client.wait_for_workers(1, timeout=60)
                _warm_up(client)
                yield cluster, client
            finally:
                with contextlib.suppress(Exception):
                    client.close(timeout=30)

    # ----------------------------------------------------------------- workloads

    def rawsock(self, limit: float) -> None:
        self.value("rawsock", rawsock_mb_per_s(self.sizes.transfer_bytes, rounds=5))

    def map(self, client: Any, limit: float) -> None:
        n = self.sizes.n_map
        start = time.perf_counter()
        futures = client.map(inc, range(n), pure=False)
        out = client.gather(futures)
        elapsed = time.perf_counter() - start
        expect(out == list(range(1, n + 1)), "map: wrong results")
        self.value("map", n / elapsed)

    def latency(self, client: Any, limit: float) -> None:
        for i in range(20):  # warm the code paths this workload uses
            client.submit(inc, i, pure=False).result(timeout=30)
        rounds = self.sizes.latency_round_trips
        per_trip = []
        for _ in range(self.sizes.latency_repeats):
            start = time.perf_counter()
            for i in range(rounds):
                got = client.submit(inc, i, pure=False).result(timeout=30)
                expect(got == i + 1, f"latency: inc({i}) returned {got!r}")
            per_trip.append((time.perf_counter() - start) / rounds * 1e3)
        self.value("latency", per_trip[0])
        self.value("latency_median", statistics.median(per_trip))

    def array(self, client: Any, limit: float) -> None:
        n = self.sizes.array_n
        total = (da.ones((n, n), chunks=(100, 100)) + 1).sum()
        start = time.perf_counter()
        (got,) = compute(total, scheduler=client)
        elapsed = time.perf_counter() - start
        expect(got == 2 * n * n, f"array: sum is {got!r}, expected {2 * n * n}")
        self.value("array", elapsed)

    def transfer(self, client: Any, limit: float) -> None:
        workers = sorted(client.scheduler_info()["workers"])
        expect(len(workers) >= 2, f"transfer: needs 2 workers, found {len(workers)}")
        a, b = workers[:2]
        small = client.submit(make_random, 1000, 0, workers=[a], pure=False)
        _timed_fetch(client, small, a, b)  # connect A and B before timing
        rates = []
        for seed in range(3):
            big = client.submit(
                make_random, self.sizes.transfer_bytes // 8, seed, workers=[a], pure=False
            )
            nbytes, seconds = _timed_fetch(client, big, a, b)
            expect(nbytes == self.sizes.transfer_bytes, f"transfer: {nbytes} bytes arrived")
            rates.append(nbytes / 1e6 / seconds)
            del big
        self.value("transfer", statistics.median(rates))

    def submit(self, limit: float) -> None:
        n = self.sizes.n_wait
        with self.cli_client() as (cluster, client):
            rss_before = _settled_rss(cluster)
            root = client.submit(time.sleep, ROOT_SLEEP, pure=False)
            start = time.perf_counter()
            futures = client.map(ident, range(n), r=root, pure=False)
            # the scheduler reads a client's messages in order: this one comes after the map
            probe = client.submit(inc, 1, pure=False).result(timeout=limit)
            elapsed = time.perf_counter() - start
            time.sleep(1.0)
            rss_after = cluster.scheduler.memory_info().rss
            expect(probe == 2, f"submit: inc(1) returned {probe!r}")
            expect(not root.done(), "submit: the root task ended during the measurement")
            pending = sum(f.status == "pending" for f in futures)
            expect(pending == n, f"submit: {pending} of {n} tasks pending, expected all")
            held = len(client.who_has())
            expect(held >= n, f"submit: the scheduler holds {held} tasks, expected >= {n}")
            self.value("submit", n / elapsed)
            self.value("submit_rss", (rss_after - rss_before) / n)

    def scale(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        for size, n in zip(("small", "large"), self.sizes.scale_ns, strict=True):
            # The small run lasts about half a second, so one hiccup moves it by a fifth:
            # it runs SCALE_SMALL_ROUNDS times in its cluster and the median time counts.
            # Memory counts from the first round only: later rounds reuse the heap the
            # first one grew. The large run averages over a minute by itself.
            rounds = SCALE_SMALL_ROUNDS if size == "small" else 1
            with self.cli_client() as (cluster, client):
                runs = [self._run_and_release(cluster, client, n, deadline) for _ in range(rounds)]
            rss = runs[0][1]
            seconds = sorted((run[0] for run in runs), key=_total)[len(runs) // 2]
            self.value(f"scale_time_{size}", _total(seconds) / n * 1e6)
            self.value(f"scale_rss_{size}", rss / n)
            for step, value in seconds.items():  # the breakdown, for the JSON output
                self.value(f"scale_{size}_{step}_seconds", value)

    def _run_and_release(
        self, cluster: CliCluster, client: Any, n: int, deadline: float
    ) -> tuple[dict[str, float], float]:
        """Seconds to submit, run and release ``n`` tasks; scheduler RSS growth at the peak."""
        rss_before = _settled_rss(cluster)
        with PeakRss(cluster) as peak:
            start = time.perf_counter()
            futures = client.map(ident, range(n), pure=False)
            submitted = time.perf_counter()
            self.mod.wait(futures, timeout=max(1.0, deadline - time.monotonic()))
            ran = time.perf_counter()
            finished = sum(f.status == "finished" for f in futures)
            expect(finished == n, f"scale: {finished} of {n} tasks finished")
            step = max(1, n // 1000)
            sample = client.gather(futures[::step])
            expect(sample == list(range(0, n, step)), "scale: wrong results")
            releasing = time.perf_counter()
            del futures
            _wait_until_no_tasks(client, deadline)
            end = time.perf_counter()
        seconds = {"submit": submitted - start, "run": ran - submitted, "release": end - releasing}
        return seconds, peak.rss - rss_before


def _total(seconds: dict[str, float]) -> float:
    return sum(seconds.values())


def _timed_fetch(client: Any, data: Any, a: str, b: str) -> tuple[int, float]:
    """Fingerprint ``data`` (held by worker ``a``) on worker ``b``, check it, time it.

    Returns the number of bytes and the seconds the fetching task took to return.
    """
    want = client.submit(fingerprint, data, workers=[a], pure=False).result(timeout=120)
    start = time.perf_counter()
    on_b = client.submit(fingerprint, data, workers=[b], pure=False)
    got = tuple(on_b.result(timeout=120))
    seconds = time.perf_counter() - start
    expect(got == tuple(want), f"transfer: fingerprint {got} on B, {want} on A")
    ran_on = client.who_has(on_b).get(on_b.key, [])
    expect(list(ran_on) == [b], f"transfer: the fetching task ran on {ran_on}, not on {b}")
    return int(got[0]), seconds


def _warm_up(client: Any) -> None:
    """Start every code path the workloads use once: tasks, numpy, dask.array."""
    expect(client.gather(client.map(inc, range(200), pure=False)) == list(range(1, 201)), "warm-up")
    expect(client.submit(fingerprint, make_random(10, 0)).result(timeout=60)[0] == 80, "warm-up")
    small = (da.ones((400, 400), chunks=(100, 100)) + 1).sum()
    expect(compute(small, scheduler=client)[0] == 320_000, "warm-up: dask.array")


def _settled_rss(cluster: CliCluster) -> int:
    """The scheduler's resident memory once the warm-up's garbage is gone."""
    time.sleep(0.5)
    return int(cluster.scheduler.memory_info().rss)


def _wait_until_no_tasks(client: Any, deadline: float) -> None:
    """Poll until the scheduler holds no task; polls back off as they get expensive."""
    pause = 0.005
    while True:
        start = time.perf_counter()
        held = len(client.who_has())
        cost = time.perf_counter() - start
        if held == 0:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"release: the scheduler still holds {held} tasks")
        time.sleep(max(pause, 2 * cost))
        pause = min(pause * 2, 0.05)


class PeakRss:
    """The highest RSS of the CLI scheduler while the context is open (sampled every 20 ms)."""

    def __init__(self, cluster: CliCluster) -> None:
        self.process = cluster.scheduler
        self.rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.rss = max(self.rss, int(self.process.memory_info().rss))
            if self._stop.wait(0.02):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)


# --------------------------------------------------------------------- raw socket


def _rawsock_receiver(conn: Connection, nbytes: int, rounds: int) -> None:
    """Receive ``rounds`` x ``nbytes`` on a loopback socket, acking each; then fingerprint them."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(_SOCKET_TIMEOUT)
        conn.send(server.getsockname()[1])
        peer, _ = server.accept()
        with peer:
            peer.settimeout(_SOCKET_TIMEOUT)
            buf = bytearray(nbytes)
            view = memoryview(buf)
            for _ in range(rounds):
                got = 0
                while got < nbytes:
                    k = peer.recv_into(view[got:])
                    if k == 0:
                        raise ConnectionError("the sender closed early")
                    got += k
                peer.sendall(b"k")
    conn.send(fingerprint(np.frombuffer(buf, dtype=np.float64)))


def rawsock_mb_per_s(nbytes: int, rounds: int) -> float:
    """Median MB/s of sending ``nbytes`` to another process over a plain loopback socket."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    receiver = ctx.Process(target=_rawsock_receiver, args=(theirs, nbytes, rounds), daemon=True)
    receiver.start()
    try:
        expect(ours.poll(_SOCKET_TIMEOUT), "rawsock: the receiver did not start")
        data = make_random(nbytes // 8, 1)
        rates = []
        with socket.create_connection(("127.0.0.1", ours.recv()), _SOCKET_TIMEOUT) as sock:
            for _ in range(rounds):
                start = time.perf_counter()
                sock.sendall(data.data)
                expect(sock.recv(1) == b"k", "rawsock: no acknowledgement")
                rates.append(data.nbytes / 1e6 / (time.perf_counter() - start))
        expect(ours.poll(_SOCKET_TIMEOUT), "rawsock: no fingerprint from the receiver")
        expect(ours.recv() == fingerprint(data), "rawsock: the receiver got other bytes")
        return statistics.median(rates)
    finally:
        receiver.join(10)
        if receiver.is_alive():
            receiver.kill()
            receiver.join(10)


def _quietly(close: Callable[[], object]) -> None:
    """Call ``close``; a failure to clean up is logged, not raised."""
    try:
        close()
    except Exception as e:
        print(f"cleanup {close!r} failed: {_describe(e)}", file=sys.stderr)


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(error, BenchError):
        return first
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
