"""The nanny, with real processes: ``conveyor worker`` runs its worker under a nanny
that restarts it when it dies or crosses the memory terminate threshold, restarts it on
request (``Client.restart``), hosts nanny plugins and ``run(nanny=True)``, and never
leaves a worker behind it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest

from conveyor import Client, KilledWorker, NannyPlugin
from conveyor.testing.bounded import bounded
from conveyor.testing.cluster import until_sync

pytestmark = pytest.mark.e2e

# worker processes cannot import this test module: its functions travel by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x: int) -> int:
    return x + 1


def environ(name: str) -> str | None:
    """The variable in the calling process (``os.environ.get`` would pickle the
    client's environment along with the bound method)."""
    return os.environ.get(name)


def hog(nbytes: int) -> int:
    """Hold ``nbytes`` of touched memory until the worker is killed."""
    import time

    block = bytearray(nbytes)
    for i in range(0, nbytes, 4096):
        block[i] = 1
    time.sleep(60)
    return len(block)


class SetEnviron(NannyPlugin):
    """Sets an environment variable in the nanny, then restarts its worker."""

    restart = True

    def __init__(self, value: str) -> None:
        self.value = value

    def setup(self, nanny: Any) -> None:
        os.environ["CONVEYOR_TEST_NANNY_PLUGIN"] = self.value


def _conveyor(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli.main", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=env,
    )


class Cluster:
    """A ``conveyor scheduler`` and ``conveyor worker`` processes, ended by pid."""

    def __init__(self, tmp_path: Path) -> None:
        self.file = str(tmp_path / "scheduler.json")
        self.common = ["--host", "127.0.0.1", "--scheduler-file", self.file]
        self.procs: list[subprocess.Popen[bytes]] = []

    def scheduler(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self._start("scheduler", "--port", "0", "--no-dashboard", env=env)

    def worker(self, *args: str) -> subprocess.Popen[bytes]:
        return self._start("worker", "--nthreads", "1", *args)

    def _start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = _conveyor(*args, *self.common, env=env)
        self.procs.append(proc)
        return proc

    def client(self) -> Client:
        return Client(scheduler_file=self.file, timeout=30, set_as_default=False)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def worker_pid(client: Client) -> int:
    [pid] = client.run(os.getpid).values()
    return int(pid)


def test_a_killed_worker_is_restarted_by_its_nanny(cluster: Cluster) -> None:
    cluster.scheduler()
    nanny = cluster.worker()
    with cluster.client() as client:
        client.wait_for_workers(1, timeout=30)
        pid = worker_pid(client)
        assert pid != nanny.pid
        assert client.run(os.getppid) == {next(iter(client.scheduler_info()["workers"])): nanny.pid}
        with bounded(client, 60, "restart after SIGKILL") as deadline:
            os.kill(pid, signal.SIGKILL)
            deadline.until(lambda: _new_worker(client, pid), "a new worker")
            assert client.submit(inc, 1).result(timeout=deadline.remaining()) == 2
        assert nanny.poll() is None


def _new_worker(client: Client, old_pid: int) -> bool:
    """One worker, and not the old one (the old one may still be listed a moment)."""
    pids = client.run(os.getpid, on_error="ignore")
    return len(pids) == 1 and old_pid not in pids.values()


def test_the_nanny_kills_a_worker_over_its_memory_limit(cluster: Cluster) -> None:
    env = {**os.environ, "DASK_CONVEYOR__SCHEDULER__ALLOWED_FAILURES": "0"}
    cluster.scheduler(env=env)
    nanny = cluster.worker("--memory-limit", "300MB")
    with cluster.client() as client:
        client.wait_for_workers(1, timeout=30)
        pid = worker_pid(client)
        fut = client.submit(hog, 400_000_000)
        with bounded(client, 120, "a memory kill and restart", [fut]) as deadline:
            with pytest.raises(KilledWorker, match=r"hog.*\(memory limit: \d+ MiB resident"):
                fut.result(timeout=deadline.remaining())
            deadline.until(lambda: _new_worker(client, pid), "a new worker")
            assert client.submit(inc, 2).result(timeout=deadline.remaining()) == 3
        assert nanny.poll() is None
    nanny.send_signal(signal.SIGTERM)
    assert nanny.wait(30) == 0
    assert nanny.stderr is not None
    assert b"memory limit: " in nanny.stderr.read()


def test_restart_plugins_and_run_in_the_nanny(cluster: Cluster) -> None:
    cluster.scheduler()
    nanny = cluster.worker()
    with cluster.client() as client:
        client.wait_for_workers(1, timeout=30)
        [(nanny_address, nanny_pid)] = client.run(os.getpid, nanny=True).items()
        assert nanny_pid == nanny.pid
        pid = worker_pid(client)
        fut = client.submit(inc, 1)
        assert fut.result(timeout=30) == 2
        client.restart(timeout=60)
        assert fut.status == "cancelled"
        pid2 = worker_pid(client)
        assert pid2 != pid
        # a plugin with restart=True: set up in the nanny, then a new worker sees it
        assert client.register_plugin(SetEnviron("on"), name="env") == {
            nanny_address: {"status": "OK"}
        }
        [seen] = client.run(environ, "CONVEYOR_TEST_NANNY_PLUGIN").values()
        assert seen == "on" and worker_pid(client) != pid2
        plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins), nanny=True)
        assert plugins == {nanny_address: ["env"]}
        client.unregister_worker_plugin("env", nanny=True)
        plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins), nanny=True)
        assert plugins == {nanny_address: []}


def test_a_worker_never_outlives_its_nanny(cluster: Cluster) -> None:
    cluster.scheduler()
    nanny = cluster.worker()
    with cluster.client() as client:
        client.wait_for_workers(1, timeout=30)
        worker = psutil.Process(worker_pid(client))
        nanny.kill()  # the nanny alone: SIGKILL, no chance to stop its worker
        assert nanny.wait(10) == -signal.SIGKILL
        worker.wait(10)  # it saw its nanny go, and closed (TimeoutExpired otherwise)
        assert not worker.is_running()


def test_no_nanny_runs_the_worker_in_the_cli_process(cluster: Cluster) -> None:
    cluster.scheduler()
    proc = cluster.worker("--no-nanny")
    with cluster.client() as client:
        client.wait_for_workers(1, timeout=30)
        assert worker_pid(client) == proc.pid
        with pytest.raises(ValueError, match="without a nanny"):
            client.run(os.getpid, nanny=True)


def test_shutdown_ends_workers_and_nannies(cluster: Cluster) -> None:
    scheduler = cluster.scheduler()
    nannies = [cluster.worker(), cluster.worker()]
    with cluster.client() as client:
        client.wait_for_workers(2, timeout=30)
        pids = set(client.run(os.getpid).values())
        client.shutdown()
    assert [p.wait(30) for p in [scheduler, *nannies]] == [0, 0, 0]
    assert not any(psutil.pid_exists(pid) for pid in pids)


def test_a_silent_worker_is_dropped_its_work_moves_and_its_nanny_replaces_it(
    cluster: Cluster,
) -> None:
    cluster.scheduler(env={**os.environ, "DASK_CONVEYOR__SCHEDULER__WORKER_TTL": "2s"})
    cluster.worker()
    cluster.worker()
    with cluster.client() as client:
        client.wait_for_workers(2, timeout=30)
        (silent, silent_pid), (other, _) = sorted(client.run(os.getpid).items())
        worker = psutil.Process(silent_pid)
        os.kill(silent_pid, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            fut = client.submit(inc, 10, workers=[silent], allow_other_workers=True)
            until_sync(
                lambda: silent not in client.scheduler_info()["workers"],
                timeout=15,
                what="the silent worker dropped",
            )
            assert time.monotonic() - stopped < 2 + 2  # worker-ttl + 2 s
            assert fut.result(timeout=30) == 11  # it ran on the other worker instead
            assert list(client.who_has(fut)[fut.key]) == [other]
        finally:
            os.kill(silent_pid, signal.SIGCONT)
        worker.wait(30)  # told to close when it woke up (TimeoutExpired otherwise)
        until_sync(
            lambda: _two_workers_without(client, silent_pid), timeout=30, what="a replacement"
        )
        assert client.submit(inc, 1).result(timeout=30) == 2


def _two_workers_without(client: Client, pid: int) -> bool:
    pids = client.run(os.getpid, on_error="ignore")
    return len(pids) == 2 and pid not in pids.values()


@pytest.mark.parametrize(
    ("given", "expected"),
    [("1GiB", 2**30), (500_000_000, 500_000_000), (0, 0), (None, 0), ("0.5", None)],
)
def test_nanny_reads_memory_limits_as_a_worker_does(given: Any, expected: int | None) -> None:
    from conveyor import Nanny, config

    nanny = Nanny("tcp://127.0.0.1:1", memory_limit=given, nthreads=1)
    if expected is None:  # a fraction of this machine's memory
        expected = int(0.5 * config.system_memory())
    assert nanny.memory_limit == expected
    with pytest.raises(ValueError, match="memory"):
        Nanny("tcp://127.0.0.1:1", memory_limit="lots")
