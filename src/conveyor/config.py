"""conveyor's configuration: defaults, typed accessors and resource parsing.

Importing this module adds the defaults in ``conveyor.yaml`` to ``dask.config`` under the
top-level key ``conveyor``. Values already set by the user (YAML files in the dask config
directories, environment variables such as ``DASK_CONVEYOR__SCHEDULER__ALLOWED_FAILURES=5``)
keep precedence over these defaults.

Durations and sizes may be written as numbers (seconds, bytes) or as strings ("2s",
"5 minutes", "400MB", "2GiB"); :func:`parse_duration`, :func:`parse_size` and
:func:`memory_limit` turn them into numbers and reject anything else with a ``ValueError``.
"""

from __future__ import annotations

import math
import numbers
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import dask.config
import psutil
import yaml
from dask.typing import no_default
from dask.utils import parse_bytes, parse_timedelta

__all__ = [
    "cpu_count",
    "get",
    "memory_limit",
    "parse_duration",
    "parse_size",
    "system_memory",
]

_DEFAULTS_FILE = Path(__file__).with_name("conveyor.yaml")
_CGROUP_MEMORY_FILES = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)
_CGROUP_CPU_FILE = Path("/sys/fs/cgroup/cpu.max")


def _load_defaults() -> dict[str, Any]:
    with _DEFAULTS_FILE.open() as f:
        defaults = yaml.safe_load(f)
    if not isinstance(defaults, dict) or "conveyor" not in defaults:
        raise RuntimeError(f"{_DEFAULTS_FILE} must hold a mapping under the key 'conveyor'")
    return defaults


dask.config.update_defaults(_load_defaults())


def get(key: str, default: Any = no_default) -> Any:
    """Return the configuration value ``conveyor.<key>``.

    ``key`` uses dots between levels, e.g. ``get("scheduler.allowed-failures")``; dashes and
    underscores are interchangeable. Without ``default``, a missing key raises ``KeyError``.
    """
    return dask.config.get(f"conveyor.{key}", default=default)


def parse_duration(value: object) -> float | None:
    """Return ``value`` as seconds, or ``None`` for ``None``.

    Accepts non-negative numbers (seconds), ``datetime.timedelta`` and strings such as
    ``"500ms"``, ``"2s"`` or ``"5 minutes"`` (a bare number in a string means seconds).
    """
    if value is None:
        return None
    error = ValueError(
        f"Invalid duration {value!r}: expected seconds as a number or a string "
        "such as '2s', '500ms' or '5 minutes'"
    )
    if isinstance(value, bool):
        raise error
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, numbers.Real):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        try:
            seconds = float(parse_timedelta(value.strip()))
        except (ValueError, KeyError, TypeError) as e:
            raise error from e
    else:
        raise error
    if not math.isfinite(seconds) or seconds < 0:
        raise error
    return seconds


def parse_size(value: object) -> int | None:
    """Return ``value`` as a number of bytes, or ``None`` for ``None``.

    Accepts non-negative numbers and strings such as ``"400MB"``, ``"1.5 GB"`` or
    ``"2GiB"`` (decimal units are powers of 1000, ``KiB``/``MiB``/``GiB`` powers of 1024).
    """
    if value is None:
        return None
    error = ValueError(
        f"Invalid size {value!r}: expected bytes as a number or a string such as '400MB' or '2GiB'"
    )
    if isinstance(value, bool):
        raise error
    if isinstance(value, numbers.Real):
        if not math.isfinite(value) or value < 0:
            raise error
        size = int(float(value))
    elif isinstance(value, str) and value.strip():
        try:
            size = int(parse_bytes(value.strip()))
        except (ValueError, KeyError, TypeError, OverflowError) as e:
            raise error from e
    else:
        raise error
    if size < 0:
        raise error
    return size


def system_memory() -> int:
    """Return the memory available to this process in bytes.

    The smaller of the machine's total memory and any cgroup (container) limit.
    """
    total = int(psutil.virtual_memory().total)
    for path in _CGROUP_MEMORY_FILES:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def cpu_count() -> int:
    """Return the number of CPUs this process may use.

    Takes the CPU affinity mask and a cgroup v2 CPU quota into account.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS and Windows
        count = os.cpu_count() or 1
    try:
        quota, period = _CGROUP_CPU_FILE.read_text().split()[:2]
    except (OSError, ValueError):
        return max(1, count)
    if quota.isdigit() and period.isdigit() and int(period) > 0:
        count = min(count, math.ceil(int(quota) / int(period)))
    return max(1, count)


def memory_limit(value: object, nthreads_share: float = 1.0) -> int | None:
    """Return a worker's memory limit in bytes, or ``None`` for no limit.

    Follows dask.distributed's ``memory_limit`` semantics:

    - ``"auto"``: the memory available to this process (:func:`system_memory`) times
      ``nthreads_share``, the worker's share of the machine (its threads / all CPUs);
    - ``0`` or ``None``: no limit;
    - a number in ``(0, 1]`` (or a string holding one): that fraction of system memory;
    - a larger number or a string such as ``"400MB"``: that many bytes.

    The result is capped at system memory. Anything else raises ``ValueError``.
    """
    if value is None:
        return None
    if not 0 < nthreads_share <= 1:
        raise ValueError(f"nthreads_share must be in (0, 1], got {nthreads_share!r}")
    total = system_memory()
    if isinstance(value, str) and value.strip().lower() == "auto":
        return max(1, int(total * nthreads_share))
    number = _as_number(value)
    if number is not None and 0 < number <= 1:
        limit = int(number * total)
    else:
        try:
            size = parse_size(value)
        except ValueError:
            raise ValueError(
                f"Invalid memory_limit {value!r}: expected 'auto', a fraction of system "
                "memory in (0, 1], bytes as a number or a string such as '4GB', "
                "or 0/None for no limit"
            ) from None
        assert size is not None
        limit = size
    if limit == 0:
        return None
    return min(limit, total)


def _as_number(value: object) -> float | None:
    """Return ``value`` as a float if it is a number or a string holding only a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
