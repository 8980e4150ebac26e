"""Every key in ``conveyor.yaml`` is read: a key nothing reads would be an option that is
silently ignored. A fresh interpreter records every ``conveyor.config.get`` while it
starts a cluster the way users do (logging set up as the CLI does, default TLS settings,
a scheduler and a nanny with every option left to the configuration, a LocalCluster of worker
processes, one of workers in this process over TCP with a computation that moves data) and the
test compares the keys read with the file. Reading a section reads every key in it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

import conveyor

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from conveyor import config

    read = set()
    real = config.get

    def spy(key, default=config.no_default):
        read.add(key.replace("_", "-"))
        return real(key, default)

    config.get = spy

    import asyncio

    from conveyor import Client, LocalCluster, Nanny, Security
    from conveyor.cli.main import _configure_logging
    from conveyor.server.scheduler import Scheduler

    _configure_logging(None)
    Security()

    async def bare_scheduler():  # every option left to the configuration
        async with Scheduler(host="127.0.0.1", port=0) as s:
            async with Nanny(s.address, host="127.0.0.1", memory_limit="1GiB"):
                pass

    asyncio.run(bare_scheduler())

    def inc(x):
        return x + 1

    with LocalCluster(n_workers=1, dashboard_address=None) as cluster:  # processes
        assert len(cluster.workers) == 1

    with LocalCluster(
        n_workers=2,
        processes=False,
        protocol="tcp",
        threads_per_worker=1,
        dashboard_address="127.0.0.1:0",
    ) as cluster, Client(cluster) as client:
        first, second = sorted(client.scheduler_info()["workers"])
        a, b = client.map(inc, [1, 2], workers=[first])
        total = client.submit(sum, [a, b], workers=[second])
        assert total.result() == 5
        client.get_worker_logs()
    json.dump(sorted(read), sys.stdout)
    """
)


def leaves(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted paths of the leaves of a configuration mapping (an empty mapping, a
    value to fill in, counts as a leaf)."""
    out: list[str] = []
    for name, value in tree.items():
        path = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            out.extend(leaves(value, path + "."))
        else:
            out.append(path)
    return out


def test_every_key_in_the_configuration_file_is_read(tmp_path: Path) -> None:
    defaults = Path(conveyor.__file__).with_name("conveyor.yaml")
    keys = leaves(yaml.safe_load(defaults.read_text())["conveyor"])
    assert len(keys) > 40
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    read = set(json.loads(proc.stdout))
    unread = [k for k in keys if not any(k == r or k.startswith(r + ".") for r in read)]
    assert unread == [], f"keys in conveyor.yaml that nothing read: {unread}"
