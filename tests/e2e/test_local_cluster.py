"""LocalCluster end to end: real worker processes (or in-process workers) over TCP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.config
import psutil
import pytest

from conveyor import Client, Nanny
from conveyor.deploy.local import LocalCluster, WorkerProcess
from conveyor.server.worker import Worker
from conveyor.testing.cluster import until, until_sync

pytestmark = pytest.mark.e2e


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """Clusters put their scratch directory here; it must be empty after they close."""
    with dask.config.set({"conveyor.local.directory": str(tmp_path)}):
        yield tmp_path
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def no_leaks(scratch: Path) -> Iterator[None]:
    """Fail if a test leaves a child process, a thread or a scratch directory behind."""
    threads_before = set(threading.enumerate())
    yield
    assert psutil.Process().children(recursive=True) == []
    assert set(threading.enumerate()) <= threads_before


def registered(cluster: LocalCluster) -> dict[str, tuple[int, int | None]]:
    """Worker name -> (nthreads, memory_limit) as the scheduler sees it."""
    assert cluster.scheduler is not None
    return {
        str(info.name): (info.nthreads, info.memory_limit)
        for info in list(cluster.scheduler.workers.values())
    }


@pytest.mark.usefixtures("no_leaks")
def test_worker_processes_run_under_nannies_that_restart_them(scratch: Path) -> None:
    with (
        LocalCluster(n_workers=2, threads_per_worker=1) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        nannies = {p.pid for p in cluster.workers.values() if isinstance(p, WorkerProcess)}
        pids = client.run(os.getpid)
        assert set(client.run(os.getppid).values()) == nannies  # each worker's parent
        victim, *_ = pids.values()
        os.kill(victim, 9)

        def replaced() -> bool:
            now = client.run(os.getpid, on_error="ignore")
            return len(now) == 2 and victim not in now.values()

        until_sync(replaced, timeout=30, what="the nanny replaced the killed worker")
        assert client.submit(sum, [1, 2]).result(timeout=30) == 3


@pytest.mark.usefixtures("no_leaks")
def test_worker_class_worker_runs_processes_without_nannies(scratch: Path) -> None:
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, worker_class=Worker) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        [proc] = cluster.workers.values()
        assert isinstance(proc, WorkerProcess)
        assert list(client.run(os.getpid).values()) == [proc.pid]


def test_worker_class_is_checked() -> None:
    with pytest.raises(ValueError, match="needs processes=True"):
        LocalCluster(n_workers=1, processes=False, worker_class=Nanny)
    with pytest.raises(TypeError, match="Nanny or Worker"):
        LocalCluster(n_workers=1, worker_class=dict)


@pytest.mark.usefixtures("no_leaks")
def test_worker_processes_start_register_and_stop(scratch: Path) -> None:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        assert set(registered(cluster)) == {"0", "1"}
        assert all(nthreads == 1 for nthreads, _ in registered(cluster).values())
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert set(cluster.workers) == {0, 1}
        procs = list(cluster.workers.values())
        assert all(isinstance(p, WorkerProcess) for p in procs)
        children = {c.pid for c in psutil.Process().children()}
        assert children == {p.pid for p in procs if isinstance(p, WorkerProcess)}
        assert re.fullmatch(
            r"LocalCluster\(tcp://127\.0\.0\.1:\d+, workers=2, threads=2, memory=.+\)",
            repr(cluster),
        )
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", cluster.dashboard_link or "")
        assert len(list(scratch.iterdir())) == 1
    assert cluster.status == "closed"


@pytest.mark.usefixtures("no_leaks")
def test_in_process_workers() -> None:
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=False) as cluster:
        assert set(registered(cluster)) == {"0", "1"}
        assert all(nthreads == 2 for nthreads, _ in registered(cluster).values())
        assert all(isinstance(w, Worker) for w in cluster.workers.values())
        assert psutil.Process().children() == []
        assert "workers=2, threads=4" in repr(cluster)


@pytest.mark.usefixtures("no_leaks")
@pytest.mark.parametrize("processes", [True, False])
def test_memory_limit_reaches_the_workers(processes: bool) -> None:
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=processes, memory_limit="400MB"
    ) as cluster:
        assert registered(cluster) == {"0": (1, 400_000_000)}
        assert "memory=381.47 MiB" in repr(cluster)


@pytest.mark.usefixtures("no_leaks")
def test_scale_up_and_down() -> None:
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True) as cluster:
        cluster.scale(3)
        assert set(registered(cluster)) == {"0", "1", "2"}
        assert len(psutil.Process().children()) == 3
        cluster.scale(1)
        assert set(registered(cluster)) == {"0"}
        assert set(cluster.workers) == {0}
        assert len(psutil.Process().children()) == 1


@pytest.mark.usefixtures("no_leaks")
def test_asynchronous_cluster() -> None:
    async def main() -> None:
        async with LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, asynchronous=True
        ) as cluster:
            assert set(registered(cluster)) == {"0"}
            await cluster.scale(2)
            assert set(registered(cluster)) == {"0", "1"}
        assert cluster.status == "closed"

        cluster = await LocalCluster(n_workers=1, processes=True, asynchronous=True)
        try:
            assert set(registered(cluster)) == {"0"}
        finally:
            await cluster.close()

    asyncio.run(main())


@pytest.mark.usefixtures("no_leaks")
def test_worker_process_failing_at_start_up_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    # read by the worker processes only: this process loaded its configuration already
    monkeypatch.setenv("DASK_CONVEYOR__COMM__TIMEOUTS__CONNECT", "not-a-duration")
    with pytest.raises(RuntimeError, match=r"(?s)exited with status 1 during start-up.*Invalid"):
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True)


@pytest.mark.usefixtures("no_leaks")
def test_bad_arguments_fail_before_starting_anything() -> None:
    with pytest.raises(ValueError, match="Invalid memory_limit"):
        LocalCluster(n_workers=1, memory_limit="lots")
    with pytest.raises(TypeError, match="cannot be passed to worker processes"):
        LocalCluster(n_workers=1, processes=True, heartbeat_interval="1s")


@pytest.mark.usefixtures("no_leaks")
def test_forgotten_cluster_processes_are_killed_at_exit(scratch: Path) -> None:
    code = (
        "from conveyor.deploy.local import LocalCluster\n"
        "c = LocalCluster(n_workers=1, threads_per_worker=1)\n"
        "print(c.workers[0].pid, flush=True)\n"
    )
    env = {**os.environ, "DASK_CONVEYOR__LOCAL__DIRECTORY": str(scratch)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    worker_pid = int(out.stdout)
    survivor = None
    with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
        proc = psutil.Process(worker_pid)
        if proc.status() != psutil.STATUS_ZOMBIE and "conveyor" in " ".join(proc.cmdline()):
            survivor = proc
    if survivor is not None:
        survivor.kill()
        pytest.fail(f"worker process {worker_pid} outlived the interpreter that started it")


@pytest.mark.parametrize(
    ("cpus", "kwargs", "shape"),
    [
        (2, {}, (2, 1)),
        (4, {}, (4, 1)),
        (6, {}, (3, 2)),
        (16, {}, (4, 4)),
        (8, {"processes": False}, (1, 8)),
        (8, {"threads_per_worker": 2}, (4, 2)),
        (8, {"threads_per_worker": 2, "processes": False}, (1, 2)),
        (8, {"n_workers": 3}, (3, 3)),
        (8, {"n_workers": 0}, (0, 8)),
    ],
)
def test_default_cluster_shape(
    monkeypatch: pytest.MonkeyPatch, cpus: int, kwargs: dict[str, Any], shape: tuple[int, int]
) -> None:
    monkeypatch.setattr("conveyor.config.cpu_count", lambda: cpus)
    cluster = LocalCluster(asynchronous=True, **kwargs)  # not awaited: nothing starts
    assert (cluster.n_workers, cluster.threads_per_worker) == shape
    assert cluster.status == "created"


def test_a_worker_busy_with_a_long_task_still_stops_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Task threads do not hold a worker process open: SIGTERM ends it mid-task."""
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        (proc,) = cluster.workers.values()
        assert isinstance(proc, WorkerProcess)
        started = client.submit(time.sleep, 300, pure=False)
        scheduler = cluster.scheduler
        assert scheduler is not None
        client.sync(
            until,
            lambda: getattr(scheduler.tasks.get(started.key), "state", None) == "processing",
            what="the long task starts",
        )
        begin = time.monotonic()
    assert time.monotonic() - begin < 10
    assert proc.popen.poll() is not None
    assert "ignored SIGTERM" not in caplog.text
