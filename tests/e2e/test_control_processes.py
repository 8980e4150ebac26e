"""The control calls against worker processes (LocalCluster(processes=True)): restart
starts new processes, uploaded files reach every process (and later ones), run and
run_on_scheduler run in the right processes, retired workers' processes exit with their
data moved, shutdown leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import psutil
import pytest

from conveyor import CancelledError, Client, LocalCluster, WorkerPlugin
from conveyor.deploy.local import WorkerProcess
from conveyor.server.worker import Worker

pytestmark = pytest.mark.e2e

# worker processes cannot import this test module: its functions travel by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x: int) -> int:
    return x + 1


def import_version(module: str) -> int:
    import importlib

    return int(importlib.import_module(module).VERSION)


@pytest.fixture
def no_leaks() -> Iterator[None]:
    yield
    assert psutil.Process().children(recursive=True) == []


@pytest.mark.usefixtures("no_leaks")
def test_restart_starts_new_worker_processes() -> None:
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        pids = set(client.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids
        fut = client.submit(inc, 1)
        assert fut.result(timeout=30) == 2
        client.restart(timeout=60)
        assert fut.status == "cancelled"
        error = fut.exception(timeout=10)
        assert isinstance(error, CancelledError) and "scheduler-restart" in str(error)
        new = set(client.run(os.getpid).values())
        assert len(new) == 2 and not new & pids
        assert not any(psutil.pid_exists(p) for p in pids)
        assert cluster.scheduler is not None
        names = sorted(str(w.name) for w in cluster.scheduler.workers.values())
        assert names == ["0", "1"]
        assert client.submit(inc, 1).result(timeout=30) == 2


@pytest.mark.usefixtures("no_leaks")
def test_upload_file_reaches_every_process_and_later_ones(tmp_path: Path) -> None:
    module = "conveyor_uploaded_e2e"
    source = tmp_path / f"{module}.py"
    source.write_text("VERSION = 1\n")
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        assert len(client.upload_file(source)) == 2
        futs = client.map(import_version, [module] * 4, pure=False)
        assert client.gather(futs) == [1] * 4
        source.write_text("VERSION = 2\n")
        client.upload_file(source)
        assert set(client.run(import_version, module).values()) == {2}
        cluster.scale(3)
        client.wait_for_workers(3, timeout=60)
        assert list(client.run(import_version, module).values()) == [2, 2, 2]
    assert module not in sys.modules  # this process never imported it


class PidFile(WorkerPlugin):
    """Writes each worker process's pid into a directory at setup."""

    name = "pid-file"

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def setup(self, worker: Worker) -> None:
        Path(self.directory, str(os.getpid())).write_text(str(worker.name))


@pytest.mark.usefixtures("no_leaks")
def test_worker_plugin_in_worker_processes(tmp_path: Path) -> None:
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(PidFile(str(tmp_path)))
        pids = {str(p) for p in client.run(os.getpid).values()}
        assert {p.name for p in tmp_path.iterdir()} == pids
        assert client.run_on_scheduler(os.getpid) == os.getpid()


@pytest.mark.usefixtures("no_leaks")
def test_retire_a_worker_process_keeps_its_data() -> None:
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        futs = client.map(inc, range(6), workers=["0"], pure=False)
        assert client.gather(futs) == list(range(1, 7))
        retired = client.retire_workers(names=["0"])
        assert [str(info["name"]) for info in retired.values()] == ["0"]
        process = cluster.workers[0]
        assert isinstance(process, WorkerProcess)
        assert process.popen.wait(30) == 0  # it exited by itself, cleanly
        assert client.gather(futs) == list(range(1, 7))
        assert cluster.scheduler is not None
        assert all(cluster.scheduler.tasks[f.key].state == "memory" for f in futs)


@pytest.mark.usefixtures("no_leaks")
def test_shutdown_stops_every_process() -> None:
    client = Client(n_workers=2, threads_per_worker=1, processes=True)
    pids = list(client.run(os.getpid).values())
    client.shutdown()
    assert client.status == "closed"
    assert not any(psutil.pid_exists(p) for p in pids)


def _conveyor(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli.main", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.mark.parametrize("allow", [True, False])
def test_cli_scheduler_remote_code_switch_restart_and_shutdown(tmp_path: Path, allow: bool) -> None:
    sched_file = str(tmp_path / "scheduler.json")
    flag = "--allow-remote-code" if allow else "--no-allow-remote-code"
    common = ["--host", "127.0.0.1", "--scheduler-file", sched_file]
    procs = [_conveyor("scheduler", "--port", "0", "--no-dashboard", flag, *common)]
    procs.append(_conveyor("worker", "--nthreads", "1", *common))
    try:
        with Client(scheduler_file=sched_file, timeout=30) as client:
            client.wait_for_workers(1, timeout=30)
            if allow:
                assert client.run_on_scheduler(os.getpid) == procs[0].pid
            else:
                with pytest.raises(PermissionError, match="--allow-remote-code"):
                    client.run_on_scheduler(os.getpid)
            before = set(client.run(os.getpid).values())
            client.restart(timeout=60)  # through the worker's nanny
            after = set(client.run(os.getpid).values())
            assert len(after) == 1 and not after & before
            assert client.submit(inc, 1).result(timeout=30) == 2
            client.shutdown()
        # the scheduler closed, and so its worker, then the worker's nanny: all exit
        # by themselves
        assert [p.wait(30) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


@pytest.mark.usefixtures("no_leaks")
def test_a_task_waiting_for_a_new_worker_finds_the_uploaded_file(tmp_path: Path) -> None:
    module = "conveyor_uploaded_first"
    source = tmp_path / f"{module}.py"
    source.write_text("VERSION = 7\n")
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        client.upload_file(source, load=False)
        # only the next worker may run it: it arrives with that worker's registration
        fut = client.submit(import_version, module, workers=["1"], pure=False)
        cluster.scale(2)
        assert fut.result(timeout=60) == 7
