"""TLS between real processes: ``conveyor scheduler``/``worker`` with certificate files,
and ``LocalCluster(security=True)``, whose in-memory credentials reach its worker
processes (and their nannies' workers) through an inherited descriptor, never a file,
a command line or an environment variable."""

from __future__ import annotations

import json
import operator
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from conveyor import Client, LocalCluster, Security
from conveyor.comm.certificates import make_temporary_credentials

pytestmark = pytest.mark.e2e


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes the test starts; killed by pid (their groups) and reaped after."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def start(procs: list[subprocess.Popen[bytes]], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        p = subprocess.Popen(
            [sys.executable, "-m", "conveyor", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    procs.append(p)
    return p


def wait_for(predicate: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, str]:
    creds = make_temporary_credentials()
    out = {}
    for name, text in (("ca", creds.ca_cert), ("cert", creds.cert), ("key", creds.key)):
        path = tmp_path / f"{name}.pem"
        path.write_text(text)
        out[name] = str(path)
    return out


def test_command_line_cluster_over_tls(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path, pem_files: dict[str, str]
) -> None:
    tls = [
        "--tls-ca-file", pem_files["ca"], "--tls-cert", pem_files["cert"],
        "--tls-key", pem_files["key"], "--require-encryption",
    ]  # fmt: skip
    sf = tmp_path / "scheduler.json"
    start(
        procs, tmp_path / "scheduler.log", "scheduler", "--host", "127.0.0.1", "--port", "0",
        "--no-dashboard", "--scheduler-file", str(sf), *tls,
    )  # fmt: skip
    wait_for(sf.exists, "the scheduler file")
    address = json.loads(sf.read_text())["address"]
    assert address.startswith("tls://127.0.0.1:")
    for i in range(2):  # under nannies: each hands the settings to its worker process
        start(
            procs, tmp_path / f"worker-{i}.log", "worker", "--scheduler-file", str(sf),
            "--nthreads", "1", "--name", f"w{i}", *tls,
        )  # fmt: skip
    security = Security(
        tls_ca_file=pem_files["ca"],
        tls_client_cert=pem_files["cert"],
        tls_client_key=pem_files["key"],
        require_encryption=True,
    )
    with Client(address, security=security, timeout=20) as c:
        c.wait_for_workers(2, timeout=30)
        workers = sorted(c.scheduler_info()["workers"])
        assert all(w.startswith("tls://") for w in workers)
        a = c.submit(operator.add, 1, 1, workers=[workers[0]])
        assert c.submit(operator.add, a, 1, workers=[workers[1]]).result(timeout=30) == 3

    # a worker with no credentials cannot join: it exits with a clear error
    plain = start(procs, tmp_path / "plain.log", "worker", address, "--no-nanny")
    assert plain.wait(60) != 0
    text = (tmp_path / "plain.log").read_text()
    assert "ssl_context" in text or "TLS" in text, text[-2000:]
    # a bad option combination is a usage error, before anything listens
    bad = start(
        procs, tmp_path / "bad.log", "scheduler", "--tls-cert", pem_files["cert"],
        "--port", "0", "--no-dashboard",
    )  # fmt: skip
    assert bad.wait(30) == 2
    assert "tls_ca_file" in (tmp_path / "bad.log").read_text()


def test_local_cluster_shares_temporary_credentials_with_its_processes() -> None:
    with (
        LocalCluster(n_workers=2, security=True, dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):
        workers = sorted(c.scheduler_info()["workers"])
        assert all(w.startswith("tls://") for w in workers)
        a = c.submit(operator.add, 1, 1, workers=[workers[0]])
        assert c.submit(operator.add, a, 1, workers=[workers[1]]).result(timeout=30) == 3
        # no key material on any command line or in any environment of the cluster's
        # processes (nannies and workers alike)
        me = psutil.Process()
        children = me.children(recursive=True)
        assert len(children) >= 4  # two nannies, two workers
        for p in children:
            assert "BEGIN" not in " ".join(p.cmdline())
            assert not any("BEGIN" in v for v in p.environ().values())
        # the workers restart with the same credentials (through their nannies)
        c.restart()
        assert c.submit(operator.add, 2, 1).result(timeout=30) == 3
