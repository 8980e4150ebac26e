"""Software versions of a process, and the mismatches between processes that matter.

Clients, the scheduler and workers each report :func:`versions`; ``Client.get_versions``
gathers them and :func:`mismatches` says which packages differ in a way that breaks
the cluster (pickles made by one version of cloudpickle that another cannot read, a
scheduler and workers speaking different versions of the protocol).
"""

from __future__ import annotations

import importlib.metadata
import locale
import os
import platform
import struct
import sys
from collections.abc import Mapping
from typing import Any

#: packages reported by every process
PACKAGES = ("conveyor", "dask", "msgpack", "cloudpickle", "numpy", "pandas", "tblib", "psutil")
#: packages that must be the same everywhere (``python`` is compared as major.minor)
REQUIRED = ("python", "conveyor", "dask", "msgpack", "cloudpickle")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, dict[str, Any]]:
    """This process's host details and package versions (None: not installed)."""
    host = {
        "python": ".".join(map(str, sys.version_info)),
        "python-bits": struct.calcsize("P") * 8,
        "OS": platform.system(),
        "OS-release": platform.release(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "byteorder": sys.byteorder,
        "LC_ALL": os.environ.get("LC_ALL", "None"),
        "LANG": os.environ.get("LANG", "None"),
        "encoding": locale.getpreferredencoding(False),
    }
    packages: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        packages[name] = _version(name)
    return {"host": host, "packages": packages}


def _comparable(name: str, version: Any) -> Any:
    if name == "python" and isinstance(version, str):
        return ".".join(version.split(".")[:2])
    return version


def mismatches(
    client: Mapping[str, Any],
    scheduler: Mapping[str, Any],
    workers: Mapping[str, Mapping[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Required packages whose versions differ: package -> {process: version}, where a
    process is "client", "scheduler" or a worker's address."""
    reports: dict[str, Mapping[str, Any]] = {"client": client, "scheduler": scheduler}
    reports.update(workers)
    out: dict[str, dict[str, Any]] = {}
    for name in REQUIRED:
        seen = {who: (r.get("packages") or {}).get(name) for who, r in reports.items()}
        if len({_comparable(name, v) for v in seen.values()}) > 1:
            out[name] = seen
    return out
