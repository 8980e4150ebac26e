"""The server processes' log formats (``conveyor.cli.logging_setup``)."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from conveyor.cli.logging_setup import JsonFormatter, configure_logging


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("conveyor.worker", logging.WARNING, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_hold_the_message_and_the_structured_fields() -> None:
    out = json.loads(JsonFormatter().format(record("lost %d keys", 3, worker="tcp://w:1")))
    assert out["message"] == "lost 3 keys" and out["worker"] == "tcp://w:1"
    assert out["level"] == "WARNING" and out["logger"] == "conveyor.worker"
    assert out["time"].endswith("+00:00")
    assert "args" not in out and "msg" not in out  # the record's own attributes stay out


def test_json_lines_carry_the_traceback_and_survive_odd_values() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = record("failed", thing=object())
        rec.exc_info = sys.exc_info()
    out = json.loads(JsonFormatter().format(rec))
    assert "RuntimeError: boom" in out["exc_info"] and out["thing"].startswith("<object")


def test_configure_logging_installs_one_handler_and_refuses_unknown_formats() -> None:
    with pytest.raises(ValueError, match="one of"):
        configure_logging("xml")
    root = logging.getLogger()
    saved = (root.level, logging.getLogger("conveyor").level)
    handler = configure_logging("json", "debug")
    try:
        assert isinstance(handler.formatter, JsonFormatter)
        assert logging.getLogger("conveyor").level == logging.DEBUG
        assert root.level == logging.WARNING
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        logging.getLogger("conveyor").setLevel(saved[1])
