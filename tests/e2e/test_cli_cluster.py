"""Tier 3: a CLI scheduler, two CLI workers and a client joined through a scheduler file."""

from __future__ import annotations

import operator
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Client

pytestmark = pytest.mark.e2e


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        raise


@pytest.fixture
def cli_cluster(tmp_path: Path) -> Iterator[str]:
    sched_file = str(tmp_path / "scheduler.json")
    procs = [
        _spawn(
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--scheduler-file",
            sched_file,
            "--no-dashboard",
        )
    ]
    try:
        for i in range(2):
            procs.append(
                _spawn(
                    "worker",
                    "--scheduler-file",
                    sched_file,
                    "--nthreads",
                    "1",
                    "--name",
                    f"cli-{i}",
                    "--memory-limit",
                    "1GB",
                )
            )
        yield sched_file
    finally:
        codes = [_stop(p) for p in reversed(procs)]
        for p in procs:
            assert p.stdout is not None
            p.stdout.close()
    assert codes == [0, 0, 0], codes


def layered_graph(width: int, depth: int) -> tuple[dict[object, object], int]:
    """``width * depth`` tasks; each task adds two tasks of the layer below."""
    dsk: dict[object, object] = {("x", 0, i): i for i in range(width)}
    values = list(range(width))
    for d in range(1, depth):
        for i in range(width):
            dsk[("x", d, i)] = (operator.add, ("x", d - 1, i), ("x", d - 1, (i + 1) % width))
        values = [values[i] + values[(i + 1) % width] for i in range(width)]
    return dsk, sum(values) % 1_000_003


def test_thousand_task_graph_through_scheduler_file(cli_cluster: str) -> None:
    width, depth = 50, 20
    dsk, expected = layered_graph(width, depth)
    dsk["total"] = (lambda *xs: sum(xs) % 1_000_003, *[("x", depth - 1, i) for i in range(width)])
    assert len(dsk) == width * depth + 1
    with Client(scheduler_file=cli_cluster, timeout=30) as client:
        client.wait_for_workers(2, timeout=30)
        info = client.scheduler_info()
        assert sorted(w["name"] for w in info["workers"].values()) == ["cli-0", "cli-1"]
        assert client.get(dsk, "total") == expected
        # work really ran on both worker processes
        fs = client.map(lambda x: os.getpid(), range(200), pure=False)
        assert len(set(client.gather(fs))) == 2
