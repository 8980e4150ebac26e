"""The ``conveyor`` command line, run as real processes."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

STARTED = re.compile(r"Scheduler started at (tcp://127\.0\.0\.1:\d+)")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - conveyor[.\w]* - INFO - ")


class Proc:
    """A ``conveyor`` subprocess whose stderr lines are collected as they arrive."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "conveyor", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            process_group=0,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self._new.put(line.rstrip("\n"))
        self._new.put(None)

    def wait_for_lines(
        self, pattern: re.Pattern[str], count: int = 1, timeout: float = 30
    ) -> list[re.Match[str]]:
        """Return the matches of the first ``count`` stderr lines matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            matches = [m for line in self.lines if (m := pattern.search(line))]
            if len(matches) >= count:
                return matches[:count]
            remaining = deadline - time.monotonic()
            line = None
            if remaining > 0:
                with contextlib.suppress(queue.Empty):
                    line = self._new.get(timeout=remaining)
            if line is None:  # timed out or end of output
                raise AssertionError(
                    f"{count} line(s) matching {pattern.pattern!r} expected; "
                    f"stderr:\n{self.stderr()}"
                )
            self.lines.append(line)

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float = 30) -> re.Match[str]:
        """Return the match of the first stderr line matching ``pattern``."""
        return self.wait_for_lines(pattern, 1, timeout)[0]

    def finish(self, timeout: float = 15) -> int:
        """Wait for the process to exit; return its status, with all stderr read."""
        code = self.popen.wait(timeout)
        self._reader.join(timeout)
        while True:
            try:
                line = self._new.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return code

    def stderr(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        self._reader.join()
        assert self.popen.stderr is not None
        self.popen.stderr.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes started by the test; killed (by pid) and reaped afterwards."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def start(procs: list[Proc], *args: str, env: dict[str, str] | None = None) -> Proc:
    p = Proc(*args, env=env)
    procs.append(p)
    return p


def start_scheduler(procs: list[Proc], scheduler_file: Path) -> tuple[Proc, str]:
    args = ["--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
    p = start(procs, "scheduler", *args, "--scheduler-file", str(scheduler_file))
    address = p.wait_for_line(STARTED).group(1)
    return p, address


def worker_started(p: Proc, address: str) -> str:
    worker_address = p.wait_for_line(re.compile(r"Worker started at (tcp://127\.0\.0\.1:\d+)"))
    p.wait_for_line(re.compile(f"Registered to: {re.escape(address)}$"))
    return worker_address.group(1)


def test_scheduler_prints_its_address_and_writes_the_scheduler_file(
    procs: list[Proc], tmp_path: Path
) -> None:
    sf = tmp_path / "scheduler.json"
    p, address = start_scheduler(procs, sf)
    assert LOG_LINE.match(p.wait_for_line(STARTED).string)
    assert json.loads(sf.read_text())["address"] == address


def test_scheduler_serves_its_dashboard(procs: list[Proc], tmp_path: Path) -> None:
    sf = tmp_path / "scheduler.json"
    args = ["--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0"]
    p = start(procs, "scheduler", *args, "--scheduler-file", str(sf))
    link = p.wait_for_line(re.compile(r"Dashboard at (http://127\.0\.0\.1:(\d+)/)$"))
    address = p.wait_for_line(STARTED).group(1)
    with urllib.request.urlopen(link.group(1) + "api/v1/status", timeout=10) as r:
        status = json.loads(r.read())
    assert status["scheduler"] == address and status["workers"] == 0
    assert json.loads(sf.read_text())["services"] == {"dashboard": int(link.group(2))}


def test_worker_registers_through_the_scheduler_file(procs: list[Proc], tmp_path: Path) -> None:
    sf = tmp_path / "scheduler.json"
    _, address = start_scheduler(procs, sf)
    w = start(
        procs, "worker", "--scheduler-file", str(sf), "--nthreads", "1", "--host", "127.0.0.1"
    )
    worker_started(w, address)


def test_worker_waits_for_the_scheduler_file(procs: list[Proc], tmp_path: Path) -> None:
    sf = tmp_path / "scheduler.json"
    w = start(
        procs, "worker", "--scheduler-file", str(sf), "--nthreads", "1", "--host", "127.0.0.1"
    )
    _, address = start_scheduler(procs, sf)
    worker_started(w, address)


def test_several_workers_in_one_process(procs: list[Proc], tmp_path: Path) -> None:
    _, address = start_scheduler(procs, tmp_path / "scheduler.json")
    w = start(procs, "worker", address, "--nworkers", "2", "--nthreads", "1", "--name", "w")
    started = w.wait_for_lines(re.compile("Worker started at (tcp://.*)"), count=2)
    assert len({m.group(1) for m in started}) == 2
    assert len(w.wait_for_lines(re.compile(f"Registered to: {re.escape(address)}"), 2)) == 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_worker_and_scheduler_cleanly(
    procs: list[Proc], tmp_path: Path, signum: signal.Signals
) -> None:
    sf = tmp_path / "scheduler.json"
    s, address = start_scheduler(procs, sf)
    w = start(procs, "worker", address, "--nthreads", "1", "--host", "127.0.0.1")
    worker_started(w, address)

    w.popen.send_signal(signum)
    assert w.finish(timeout=10) == 0, w.stderr()
    assert "Traceback" not in w.stderr()

    s.popen.send_signal(signum)
    assert s.finish(timeout=10) == 0, s.stderr()
    assert "Traceback" not in s.stderr()


def test_worker_exits_when_its_scheduler_goes_away(procs: list[Proc], tmp_path: Path) -> None:
    s, address = start_scheduler(procs, tmp_path / "scheduler.json")
    w = start(procs, "worker", address, "--nthreads", "1", "--host", "127.0.0.1")
    worker_started(w, address)
    s.popen.send_signal(signal.SIGTERM)
    assert s.finish(timeout=10) == 0, s.stderr()
    assert w.finish(timeout=30) == 0, w.stderr()


def test_scheduler_idle_timeout(procs: list[Proc]) -> None:
    s = start(procs, "scheduler", "--host", "127.0.0.1", "--port", "0", "--idle-timeout", "1s")
    s.wait_for_line(STARTED)
    assert s.finish(timeout=30) == 0, s.stderr()


def one_line_error(p: Proc) -> str:
    text = p.stderr()
    assert "Traceback" not in text
    errors = [line for line in p.lines if line.startswith("Error: ")]
    assert len(errors) == 1, text
    return errors[0]


def test_worker_without_address_fails_clearly(procs: list[Proc]) -> None:
    w = start(procs, "worker")
    assert w.finish() != 0
    assert "ADDRESS or --scheduler-file" in one_line_error(w)


def test_worker_with_bad_memory_limit_fails_clearly(procs: list[Proc]) -> None:
    w = start(procs, "worker", "tcp://127.0.0.1:1", "--memory-limit", "lots")
    assert w.finish() != 0
    assert "Invalid memory_limit 'lots'" in w.stderr()
    assert "Traceback" not in w.stderr()


def test_unreachable_scheduler_fails_after_the_connect_timeout(procs: list[Proc]) -> None:
    with socket.socket() as sock:  # a port on which nobody listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"DASK_CONVEYOR__COMM__TIMEOUTS__CONNECT": "1s"}
    t0 = time.monotonic()
    w = start(procs, "worker", f"tcp://127.0.0.1:{port}", "--host", "127.0.0.1", env=env)
    assert w.finish(timeout=30) == 1
    assert time.monotonic() - t0 < 25
    assert "could not start" in one_line_error(w)


def test_scheduler_port_in_use_fails_clearly(procs: list[Proc]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        s = start(procs, "scheduler", "--host", "127.0.0.1", "--port", str(port))
        assert s.finish() == 1
    assert "could not start" in one_line_error(s)


def test_console_script_and_module_entry_points() -> None:
    script = shutil.which("conveyor")
    assert script is not None
    for cmd in ([script, "--help"], [sys.executable, "-m", "conveyor.cli", "--help"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "scheduler" in out.stdout
        assert "worker" in out.stdout


def test_demo_runs_and_checks_its_result() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "conveyor", "demo", "--tasks", "50"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(correct)" in out.stdout
    assert re.search(r"^Dashboard: http://127\.0\.0\.1:\d+/$", out.stdout, re.MULTILINE)


def test_json_logs_carry_structured_fields(procs: list[Proc], tmp_path: Path) -> None:
    sf = tmp_path / "scheduler.json"
    args = ["--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--log-format", "json"]
    s = start(procs, "scheduler", *args, "--scheduler-file", str(sf))
    started = json.loads(s.wait_for_line(re.compile(r'"message": "Scheduler started at')).string)
    assert started["logger"] == "conveyor.scheduler" and started["level"] == "INFO"
    assert started["address"].startswith("tcp://127.0.0.1:") and started["process"] > 0
    # a worker under a nanny: the nanny passes the format on to the worker's process
    w = start(
        procs, "worker", "--scheduler-file", str(sf), "--nthreads", "1", "--host", "127.0.0.1",
        "--log-format", "json",
    )  # fmt: skip
    registered = json.loads(s.wait_for_line(re.compile(r'"message": "Register worker')).string)
    assert registered["worker"].startswith("tcp://127.0.0.1:") and registered["nthreads"] == 1
    line = w.wait_for_line(re.compile(r'"message": "Worker started at'))
    worker_record = json.loads(line.string)
    assert worker_record["logger"] == "conveyor.worker"
    assert worker_record["process"] != started["process"]
    w.wait_for_line(re.compile(r'"message": "Registered to: '))
    for text in s.lines + w.lines:  # every line either wrote is one JSON object
        assert isinstance(json.loads(text), dict), text


def test_a_bad_log_format_is_a_usage_error(procs: list[Proc]) -> None:
    p = start(procs, "scheduler", "--log-format", "xml")
    assert p.finish() == 2
    assert "'xml' is not one of 'text', 'json'" in p.stderr()
