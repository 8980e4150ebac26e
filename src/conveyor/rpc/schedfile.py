"""Scheduler files: a small JSON document naming a running scheduler's address.

``conveyor scheduler --scheduler-file F`` writes one; workers and clients started with
``scheduler_file=F`` read it, waiting for it to appear.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any


def write_scheduler_file(path: str, info: dict[str, Any]) -> None:
    """Write ``info`` (with at least ``"address"``) to ``path`` atomically: a reader
    never sees half a file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2)
    os.replace(tmp, path)


def read_scheduler_file(path: str, timeout: float) -> str:
    """The scheduler address in a scheduler file, waiting up to ``timeout`` for it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path) as f:
                return str(json.load(f)["address"])
        except (OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise OSError(f"no scheduler address in {path!r} after {timeout} s") from None
        time.sleep(0.05)
