"""How conveyor's server processes log: one logger hierarchy, text or JSON lines.

Every logger conveyor uses sits under ``conveyor``: ``conveyor.scheduler``,
``conveyor.worker``, ``conveyor.nanny``, ``conveyor.client``, ``conveyor.comm``,
``conveyor.dashboard``, ``conveyor.plugins``, ``conveyor.deploy``, ``conveyor.cli``. A
library configures no handler; the ``conveyor scheduler`` and ``conveyor worker``
commands (and the worker processes a nanny starts) log to stderr, in the format
``conveyor.logging.format`` names:

- ``text``: ``time - logger - LEVEL - message``, one line per record;
- ``json``: one JSON object per line with ``time`` (UTC, ISO 8601), ``level``,
  ``logger``, ``process``, ``message``, the traceback as ``exc_info`` when there is one,
  and the structured fields the call attached (``worker``, ``client``, ``reason``...,
  passed as ``extra=``), for log collectors to index without parsing messages.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
FORMATS = ("text", "json")

#: the attributes every LogRecord has: the rest came from ``extra=``
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                out[name] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=repr)


def configure_logging(fmt: str = "text", level: str | int = "INFO") -> logging.Handler:
    """Log to stderr: conveyor's loggers at ``level``, other libraries' at WARNING.
    Returns the handler it installed on the root logger."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("conveyor").setLevel(level.upper() if isinstance(level, str) else level)
    return handler
