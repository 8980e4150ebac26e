"""A text progress bar for futures."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import TextIO

from conveyor.client.future import Future
from conveyor.client.waiting import as_completed


def progress(
    futures: Iterable[Future],
    *,
    file: TextIO | None = None,
    width: int = 40,
    label: str = "",
    interval: float = 0.1,
) -> None:
    """Draw a bar on ``file`` (stderr) until every future is done; errors count as done.

    Redraws at most every ``interval`` seconds, and once at the end.
    """
    out = file if file is not None else sys.stderr
    fs = list(futures)
    total = len(fs)
    errors = 0
    done = 0
    start = last = time.monotonic()
    _draw(out, label, done, total, errors, width, 0.0)
    for batch in as_completed(fs).batches():
        done += len(batch)
        errors += sum(1 for f in batch if f.status != "finished")
        now = time.monotonic()
        if now - last >= interval or done == total:
            _draw(out, label, done, total, errors, width, now - start)
            last = now
    out.write("\n")
    out.flush()


def _draw(
    out: TextIO, label: str, done: int, total: int, errors: int, width: int, t: float
) -> None:
    frac = done / total if total else 1.0
    filled = int(frac * width)
    bar = "#" * filled + "-" * (width - filled)
    err = f", {errors} failed" if errors else ""
    prefix = f"{label} " if label else ""
    out.write(f"\r{prefix}[{bar}] {done}/{total} ({frac:4.0%}) {t:5.1f}s{err}")
    out.flush()
