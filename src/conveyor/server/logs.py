"""The recent log lines of a server process, for ``Client.get_scheduler_logs`` and
``Client.get_worker_logs``.

Every conveyor logger sits under ``logging.getLogger("conveyor")``; one handler on that
logger keeps the last ``admin.log-length`` records of the process (a bounded deque: a
record costs one append, and nothing is kept beyond the bound). Only records that pass
the loggers' levels reach it: ``conveyor scheduler`` and ``conveyor worker`` log INFO
and above, a program embedding conveyor whatever it configured.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from conveyor import config

__all__ = ["LogBuffer", "logs_reply", "process_logs"]

_lock = threading.Lock()
_buffer: LogBuffer | None = None


class LogBuffer(logging.Handler):
    """Keeps the last ``length`` records as (level name, formatted message)."""

    def __init__(self, length: int) -> None:
        super().__init__(logging.NOTSET)
        self.records: deque[tuple[str, str]] = deque(maxlen=length)
        self.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append((record.levelname, self.format(record)))
        except Exception:
            self.handleError(record)

    def last(self, n: int | None = None) -> list[tuple[str, str]]:
        """The last ``n`` records (all kept if None), oldest first."""
        records = list(self.records)
        return records if n is None else records[-n:] if n > 0 else []


def process_logs() -> LogBuffer:
    """This process's buffer, attached to the ``conveyor`` logger on first use."""
    global _buffer
    with _lock:
        if _buffer is None:
            _buffer = LogBuffer(int(config.get("admin.log-length")))
            logging.getLogger("conveyor").addHandler(_buffer)
        return _buffer


def logs_reply(msg: dict[str, Any]) -> list[tuple[str, str]]:
    """The answer to a ``get-logs`` request: ``{"n": count or None}``."""
    n = msg.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise ValueError(f"n must be a count >= 0 or None, not {n!r}")
    return process_logs().last(n)
