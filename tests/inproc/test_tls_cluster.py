"""A cluster over TLS, in one process: scheduler, workers and clients use the cluster's
credentials for every connection; peers without them, or with another CA's, are
refused; encryption can be required; ``security=`` is honoured or refused everywhere."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import dask
import pytest

from conveyor import Client, LocalCluster, Scheduler, Security, Worker
from conveyor.comm.addressing import parse_host_port
from conveyor.comm.certificates import make_temporary_credentials


def inc(x: int) -> int:
    return x + 1


@pytest.fixture(scope="module")
def cluster() -> LocalCluster:
    with LocalCluster(
        n_workers=2, processes=False, security=True, dashboard_address=None
    ) as cluster:
        yield cluster


def test_every_address_is_tls_and_work_runs(cluster: LocalCluster) -> None:
    assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
    with Client(cluster) as c:  # takes the cluster's credentials
        workers = list(c.scheduler_info()["workers"])
        assert len(workers) == 2 and all(w.startswith("tls://") for w in workers)
        # a transfer between the workers, and scattered data, over TLS
        a = c.submit(inc, 1, workers=[workers[0]])
        b = c.submit(inc, a, workers=[workers[1]])
        [data] = c.scatter([10], workers=[workers[0]])
        assert c.gather([b, c.submit(inc, data, workers=[workers[1]])]) == [3, 11]


def test_a_client_without_the_clusters_credentials_is_refused(cluster: LocalCluster) -> None:
    with pytest.raises((OSError, ValueError), match=r"ssl_context|TLS|tls"):
        Client(cluster.scheduler_address, timeout=2)
    stranger = Security.temporary()  # a certificate from another CA
    with pytest.raises(OSError, match=r"certificate|TLS|refused"):
        Client(cluster.scheduler_address, security=stranger, timeout=2)
    with Client(cluster.scheduler_address, security=cluster.security) as c:  # the right one
        assert c.submit(inc, 41).result() == 42


def test_plain_bytes_to_a_tls_port_get_nothing(cluster: LocalCluster) -> None:
    host, port = parse_host_port(cluster.scheduler_address.split("://", 1)[1])
    with socket.create_connection((host, port), timeout=5) as sock:
        # a conveyor handshake in the clear: not TLS, so the server closes
        sock.sendall(b"\x00\x00\x00\x08conveyor")
        sock.settimeout(5)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        assert b"conveyor" not in data
    with Client(cluster) as c:  # the cluster serves on
        assert c.submit(inc, 1).result() == 2


def test_a_worker_without_credentials_cannot_join(cluster: LocalCluster) -> None:
    async def main() -> None:
        w = Worker(cluster.scheduler_address, nthreads=1, memory_limit=0)
        with pytest.raises((OSError, ValueError)):
            await asyncio.wait_for(w.start(), 10)

    asyncio.run(main())
    assert len(cluster.scheduler.workers) == 2  # type: ignore[union-attr]


def test_required_encryption_refuses_plain_listeners() -> None:
    secure = Security.temporary()  # require_encryption=True
    assert secure.require_encryption

    async def main() -> None:
        s = Scheduler(host="127.0.0.1", protocol="tcp", security=secure, dashboard=False)
        with pytest.raises(ValueError, match="encryption is required"):
            await s.start()

    asyncio.run(main())


def test_security_true_is_for_local_clusters_only() -> None:
    with pytest.raises(TypeError, match="LocalCluster"):
        Scheduler(security=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"conveyor\.Security"):
        Scheduler(security="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="LocalCluster"):
        Client("tls://127.0.0.1:1", security=True)


def test_credentials_from_the_configuration(tmp_path: Path) -> None:
    creds = make_temporary_credentials()
    files = {}
    for name, text in (("ca", creds.ca_cert), ("cert", creds.cert), ("key", creds.key)):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text(text)
    settings = {"conveyor.comm.tls.ca-file": str(files["ca"])}
    for role in ("scheduler", "worker", "client"):
        settings[f"conveyor.comm.tls.{role}.cert"] = str(files["cert"])
        settings[f"conveyor.comm.tls.{role}.key"] = str(files["key"])

    async def main() -> None:
        async with (
            Scheduler(host="127.0.0.1", dashboard=False) as s,
            Worker(s.address, nthreads=1, memory_limit=0),
            Client(s.address, asynchronous=True) as c,
        ):
            assert s.address.startswith("tls://")  # credentials configured: TLS
            assert await c.submit(inc, 1) == 2

    with dask.config.set(settings):
        asyncio.run(main())
