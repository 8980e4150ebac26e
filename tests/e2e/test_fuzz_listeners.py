"""Malformed input thrown at every listener of a real cluster: a ``conveyor scheduler``
(and its dashboard) and a ``conveyor worker`` with its nanny, each its own process.

Inputs come from :mod:`conveyor.testing.fuzz` (random bytes, bit-flipped and truncated
valid frames, absurd lengths, HTTP requests and a TLS ClientHello on the TCP ports, valid
frames with unknown ops or wrong types after a handshake; malformed HTTP and path
traversal on the dashboard). Each case is sent on a fresh connection. Every server must
close a bad connection within a second of the end of its input (the processes run with
a handshake timeout of 1 s, so one that stops mid-handshake is closed by then too), the
dashboard must never answer 5xx nor leak a file, a legitimate client keeps getting
correct results throughout, and at the end every process is alive (the same worker
process), its log has no traceback and no error line but the one-line "Closing <Peer>
after 'op' failed" of a handled bad message, and its peak RSS grew by at most the bytes
sent to it plus a slack. The servers run with the default limits (frames up to 1 GiB):
a declared frame costs what arrives of it, not what was declared (tested on its own at
the end, with another problem the fuzzing found).

The small variant runs in the normal test run. The full one (5000 cases per listener
by default) runs only when selected::

    FUZZ_CASES=5000 python -m pytest -m fuzz tests/e2e/test_fuzz_listeners.py
"""

from __future__ import annotations

import asyncio
import json
import operator
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from conveyor import Client
from conveyor.testing.cluster import until_sync
from conveyor.testing.fuzz import (
    NANNY_OPS,
    SCHEDULER_OPS,
    WORKER_OPS,
    FuzzCase,
    comm_cases,
    frames_bytes,
    handshake_bytes,
    http_cases,
)

pytestmark = pytest.mark.e2e

HANDSHAKE_TIMEOUT = 1.0
#: a bad connection must be closed this long after the end of its input
CLOSE_WITHIN = 1.0
#: RSS a process may gain beyond what it was sent
MEMORY_SLACK = 30 * 1024 * 1024
CONCURRENCY = 32
#: the one error line a peer gets for a stream message its handler failed on (a wrong
#: field type, say): the connection is closed and the server goes on
HANDLED = re.compile(r" - conveyor\.server - ERROR - Closing <Peer .*> after '[^']*' failed: ")
SMALL_CASES = 500
FULL_CASES = int(os.environ.get("FUZZ_CASES", "5000"))


@dataclass
class Target:
    """One listener and the process behind it."""

    name: str
    port: int
    pid: int
    ops: tuple[str, ...] = ()
    #: the cluster token a registered peer would show (None: the scheduler asks none)
    token: str | None = None
    sent: int = 0
    rss_before: int = 0
    rss_peak: int = 0
    slow: list[str] = field(default_factory=list)


@dataclass
class Cluster:
    """The processes under test; stderr of each goes to a log file."""

    scheduler: subprocess.Popen[bytes]
    nanny: subprocess.Popen[bytes]
    logs: list[Path]
    scheduler_file: Path
    dashboard_port: int


def _conveyor(log: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DASK_CONVEYOR__COMM__TIMEOUTS__HANDSHAKE": f"{HANDSHAKE_TIMEOUT}s",
        "PYTHONFAULTHANDLER": "1",
        **env,
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "conveyor", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            process_group=0,
        )


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _wait_for_log(log: Path, pattern: str, timeout: float = 30) -> re.Match[str]:
    found: list[re.Match[str]] = []

    def seen() -> bool:
        m = re.search(pattern, log.read_text(errors="replace"))
        if m:
            found.append(m)
        return m is not None

    until_sync(seen, timeout, f"{pattern!r} in {log}")
    return found[0]


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Cluster]]:
    """Starts a scheduler (with its dashboard) and a worker under a nanny, with extra
    environment variables; stops them (by process group) afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> Cluster:
        sf = tmp_path / "scheduler.json"
        slog, wlog = tmp_path / "scheduler.log", tmp_path / "worker.log"
        address = ["--host", "127.0.0.1", "--port", "0"]
        dashboard = ["--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sf)]
        scheduler = _conveyor(slog, "scheduler", *address, *dashboard, env=env)
        procs.append(scheduler)
        port = int(_wait_for_log(slog, r"Dashboard at http://127\.0\.0\.1:(\d+)/").group(1))
        _wait_for_log(slog, r"Scheduler started at")
        worker = ["--scheduler-file", str(sf), "--host", "127.0.0.1", "--nthreads", "1"]
        nanny = _conveyor(wlog, "worker", *worker, env=env)
        procs.append(nanny)
        _wait_for_log(wlog, r"Nanny at tcp://")
        return Cluster(scheduler, nanny, [slog, wlog], sf, port)

    try:
        yield start
    finally:
        for p in reversed(procs):
            _stop(p)


# ------------------------------------------------------------------ the probes


async def _read_until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes | None:
    """What the server sent until it closed; None if it did not close in ``timeout``."""
    data = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return bytes(data)


async def _send(writer: asyncio.StreamWriter, payload: bytes, eof: bool) -> None:
    try:
        writer.write(payload)
        await writer.drain()
        if eof:
            writer.write_eof()
    except (ConnectionError, OSError):
        pass  # the server closed first: it may, on bad bytes


async def _probe_comm(target: Target, case: FuzzCase) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    try:
        await _send(writer, case.payload, case.eof)
        target.sent += len(case.payload)
        if case.eof:
            closed = await _read_until_closed(reader, CLOSE_WITHIN)
        else:
            # silent mid-handshake: closed at the handshake timeout; a handshaken peer
            # may be kept open while it waits for more bytes, until it half-closes
            wait = CLOSE_WITHIN if case.handshaken else HANDSHAKE_TIMEOUT + CLOSE_WITHIN
            closed = await _read_until_closed(reader, wait)
            if closed is None and case.handshaken is not False:
                await _send(writer, b"", eof=True)
                closed = await _read_until_closed(reader, CLOSE_WITHIN)
        if closed is None:
            target.slow.append(f"{case.kind} eof={case.eof}: {case.payload[:60]!r}")
    finally:
        writer.close()


@dataclass
class HttpResult:
    """What the dashboard answered to malformed requests."""

    statuses: dict[int, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


async def _probe_http(target: Target, kind: str, request: bytes, result: HttpResult) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    try:
        # no half-close at first: aiohttp drops a request whose client half-closed
        await _send(writer, request, eof=False)
        target.sent += len(request)
        answer = await _read_until_closed(reader, CLOSE_WITHIN)
        if answer is None:  # kept alive after answering, or waiting for more bytes
            await _send(writer, b"", eof=True)
            answer = await _read_until_closed(reader, CLOSE_WITHIN)
        if answer is None:
            result.problems.append(f"{kind}: not closed: {request[:80]!r}")
            return
        if answer:
            m = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
            if m is None:
                result.problems.append(f"{kind}: not an HTTP answer: {answer[:80]!r}")
                return
            status = int(m.group(1))
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status >= 500 or b"Traceback" in answer or b"root:" in answer:
                result.problems.append(f"{kind}: {request[:80]!r} -> {answer[:300]!r}")
    finally:
        writer.close()


async def _sample_rss(targets: list[Target], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for t in targets:
            t.rss_peak = max(t.rss_peak, psutil.Process(t.pid).memory_info().rss)
        try:
            async with asyncio.timeout(0.1):
                await stop.wait()
        except TimeoutError:
            pass


async def _fuzz(
    comm_targets: list[Target], dashboard: Target, n: int, http_result: HttpResult
) -> None:
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def bounded(probe: object) -> None:
        async with semaphore:
            await probe  # type: ignore[misc]

    stop = asyncio.Event()
    sampler = asyncio.ensure_future(_sample_rss([*comm_targets, dashboard], stop))
    probes = []
    for i, t in enumerate(comm_targets):
        for case in comm_cases(seed=1000 + i, n=n, ops=t.ops, token=t.token):
            probes.append(bounded(_probe_comm(t, case)))
    for kind, request in http_cases(seed=7, n=max(n // 2, 1)):
        probes.append(bounded(_probe_http(dashboard, kind, request, http_result)))
    try:
        await asyncio.gather(*probes)
    finally:
        stop.set()
        await sampler


# ------------------------------------------------------------------ the test


def _run(cluster: Cluster, n: int) -> None:
    with Client(scheduler_file=str(cluster.scheduler_file), timeout=30) as client:
        client.wait_for_workers(1, timeout=30)
        assert client.submit(operator.add, 1, 1).result(timeout=30) == 2  # warmed up
        [(worker_address, worker_pid)] = client.run(os.getpid).items()
        [(nanny_address, nanny_pid)] = client.run(os.getpid, nanny=True).items()
        assert nanny_pid == cluster.nanny.pid
        info = client.scheduler_info()
        scheduler_port = int(info["address"].rsplit(":", 1)[1])
        dashboard_port = int(info["services"]["dashboard"])
        assert dashboard_port == cluster.dashboard_port

        def port(address: str) -> int:
            return int(address.rsplit(":", 1)[1])

        spid = cluster.scheduler.pid
        # workers and nannies serve only peers showing the cluster token: half the
        # cases show it (as a registered peer would), so their messages reach handlers
        token = client.pool.connection_args["handshake_extra"]["token"]
        targets = [
            Target("scheduler", scheduler_port, spid, SCHEDULER_OPS),
            Target("worker", port(worker_address), worker_pid, WORKER_OPS, token=token),
            Target("nanny", port(nanny_address), nanny_pid, NANNY_OPS, token=token),
        ]
        dashboard = Target("dashboard", dashboard_port, spid)
        for t in [*targets, dashboard]:
            t.rss_before = t.rss_peak = psutil.Process(t.pid).memory_info().rss
        http_result = HttpResult()
        errors: list[BaseException] = []

        def fuzz() -> None:
            try:
                asyncio.run(_fuzz(targets, dashboard, n, http_result))
            except BaseException as e:
                errors.append(e)

        thread = threading.Thread(target=fuzz, name="fuzzer")
        started = time.monotonic()
        thread.start()
        checked = 0
        try:
            while thread.is_alive() or checked == 0:
                futures = client.map(operator.add, range(checked, checked + 10), [1] * 10)
                assert client.gather(futures) == [i + 1 for i in range(checked, checked + 10)]
                checked += 10
        finally:
            thread.join()
        elapsed = time.monotonic() - started
        assert not errors, errors
        # the legitimate client kept working, and nothing died or restarted
        assert client.submit(operator.mul, 6, 7).result(timeout=30) == 42
        assert client.run(os.getpid) == {worker_address: worker_pid}
        assert client.run(os.getpid, nanny=True) == {nanny_address: nanny_pid}
    assert cluster.scheduler.poll() is None and cluster.nanny.poll() is None

    report = {t.name: (t.sent, (t.rss_peak - t.rss_before) / 2**20) for t in [*targets, dashboard]}
    print(f"\nfuzz: {n} cases per comm listener in {elapsed:.1f} s, {checked} tasks checked")
    print(f"fuzz: dashboard statuses {dict(sorted(http_result.statuses.items()))}")
    print(f"fuzz: (bytes sent, peak RSS growth MiB) {report}")
    for t in targets:
        assert not t.slow, f"{t.name}: {len(t.slow)} connections not closed in time: {t.slow[:5]}"
    assert not http_result.problems, http_result.problems[:5]
    assert http_result.statuses, "the dashboard never answered"
    # the scheduler process hosts its listener and the dashboard
    sent_to = {spid: targets[0].sent + dashboard.sent, **{t.pid: t.sent for t in targets[1:]}}
    for t in targets:
        growth = t.rss_peak - t.rss_before
        assert growth <= sent_to[t.pid] + MEMORY_SLACK, (t.name, growth, sent_to[t.pid])
    for log in cluster.logs:
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, f"{log.name}:\n{text[-5000:]}"
        errors = [
            line
            for line in text.splitlines()
            if re.search(r" - (ERROR|CRITICAL) - ", line) and not HANDLED.search(line)
        ]
        assert not errors, f"{log.name}: {errors[:10]}"


def test_every_listener_survives_malformed_input(
    start_cluster: Callable[[dict[str, str]], Cluster],
) -> None:
    _run(start_cluster({}), SMALL_CASES)


@pytest.mark.fuzz
def test_every_listener_survives_malformed_input_full(
    start_cluster: Callable[[dict[str, str]], Cluster], request: pytest.FixtureRequest
) -> None:
    if "fuzz" not in (request.config.option.markexpr or ""):
        pytest.skip("the full fuzz run takes minutes: select it with -m fuzz")
    _run(start_cluster({}), FULL_CASES)


@pytest.mark.parametrize("handshake", [False, True], ids=["stranger", "after-handshake"])
def test_a_declared_frame_costs_what_arrived_not_what_was_declared(
    start_cluster: Callable[[dict[str, str]], Cluster], handshake: bool
) -> None:
    """A header declaring 512 MiB: before the conveyor handshake the connection is
    closed instead of allocating; after it, the buffer is paged in only as data
    arrives (at most as far ahead again as has arrived), so 1 MiB of data costs about
    that much, not 512 MiB."""
    cluster = start_cluster({})
    pid = cluster.scheduler.pid
    port = int(json.loads(cluster.scheduler_file.read_text())["address"].rsplit(":", 1)[1])
    before = psutil.Process(pid).memory_info().rss
    declared = 512 * 1024 * 1024
    sent = 1024 * 1024 if handshake else 10
    peak = before
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if handshake:  # as a client does: send one, wait for the server's
            sock.sendall(handshake_bytes("client"))
            assert b"handshake" in sock.recv(1 << 16)
        sock.sendall(struct.pack("<IQ", 1, declared) + b"x" * sent)
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT + CLOSE_WITHIN
        while time.monotonic() < deadline:
            peak = max(peak, psutil.Process(pid).memory_info().rss)
            time.sleep(0.02)  # sampling the RSS: nothing announces a page-in
        sock.setblocking(False)
        try:
            closed = sock.recv(1 << 16) == b""
        except BlockingIOError:
            closed = False
        except ConnectionResetError:
            closed = True
        assert closed != handshake  # a stranger is closed on; a peer may go on sending
    assert cluster.scheduler.poll() is None
    assert peak - before <= 2 * sent + MEMORY_SLACK, f"RSS grew {(peak - before) / 2**20:.0f} MiB"


def test_a_stranger_cannot_add_a_nanny_plugin(
    start_cluster: Callable[[dict[str, str]], Cluster],
) -> None:
    cluster = start_cluster({})
    with Client(scheduler_file=str(cluster.scheduler_file), timeout=30) as client:
        client.wait_for_workers(1, timeout=30)
        [nanny_address] = client.run(os.getpid, nanny=True)
    port = int(nanny_address.rsplit(":", 1)[1])
    msg = {"op": "plugin-add", "name": "x", "plugin": b"\x00" * 7, "reply": 1}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(handshake_bytes("client") + frames_bytes(msg))
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):  # the reply, then the close
            pass
    log = cluster.logs[1].read_text(errors="replace")
    assert "Could not load nanny plugin" not in log  # refused before unpickling
    assert "Traceback" not in log
    assert "showed no token of this cluster" in log  # refused at the door, one line
