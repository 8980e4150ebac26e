"""Worker resources from the command line: ``conveyor worker --resources`` and
``LocalCluster(processes=True, resources=...)`` (which passes that option on)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dask.config
import psutil
import pytest

from conveyor import Client, LocalCluster

pytestmark = pytest.mark.e2e


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    with dask.config.set({"conveyor.local.directory": str(tmp_path)}):
        yield tmp_path
    assert psutil.Process().children(recursive=True) == []


def test_worker_processes_offer_their_resources(scratch: Path) -> None:
    def hold(seconds: float) -> tuple[float, float]:  # nested: pickled by value
        start = time.time()
        time.sleep(seconds)
        return start, time.time()

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=True, resources={"GPU": 1, "MEM": 2e9}
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        (info,) = client.scheduler_info()["workers"].values()
        assert info["resources"] == {"GPU": 1.0, "MEM": 2e9}
        futures = [client.submit(hold, 0.05, resources={"GPU": 1}, pure=False) for _ in range(4)]
        spans = sorted(client.gather(futures))
        # two threads, one GPU: the worker process runs them one after another
        for (_, stop), (start, _) in itertools.pairwise(spans):
            assert stop <= start


def test_bad_resources_option_is_a_usage_error() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "conveyor.cli.main",
            "worker",
            "tcp://127.0.0.1:9",
            "--resources",
            "GPU=lots",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--resources" in proc.stderr and "bad amount of resource 'GPU'" in proc.stderr
