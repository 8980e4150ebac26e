"""Losing the scheduler: a client's pending futures and new calls fail at once with a
clear error, it reconnects when a scheduler is back on the same address, and the
workers (and their nannies) exit instead of waiting for a scheduler that is gone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from conveyor import CancelledError, Client
from conveyor.testing.cluster import until_sync

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _start(procs: list[subprocess.Popen[bytes]], *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli.main", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    procs.append(proc)
    return proc


def test_a_client_fails_fast_then_reconnects(procs: list[subprocess.Popen[bytes]]) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    port = address.rsplit(":", 1)[1]
    scheduler = _start(procs, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard")
    worker = _start(procs, "worker", address, "--nthreads", "1")
    with Client(address, timeout=30, set_as_default=False) as client:
        client.wait_for_workers(1, timeout=30)
        pending = client.submit(time.sleep, 60, pure=False)
        os.killpg(scheduler.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(CancelledError, match=r"connection to the scheduler .* was lost"):
            pending.result(timeout=10)
        with pytest.raises(ConnectionError, match="reconnecting"):
            client.submit(sum, [1, 2])
        with pytest.raises(ConnectionError, match="reconnecting"):
            client.nthreads()
        assert time.monotonic() - started < 5
        # its worker (under a nanny) exits: the scheduler is gone
        assert worker.wait(10) == 0
        # a scheduler back on the same address: the client registers with it again
        _start(procs, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard")
        until_sync(lambda: client.status == "running", timeout=30, what="reconnected")
        _start(procs, "worker", address, "--nthreads", "1")
        client.wait_for_workers(1, timeout=30)
        assert client.submit(sum, [1, 2]).result(timeout=30) == 3
