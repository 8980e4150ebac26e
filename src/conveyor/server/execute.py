"""Running one task on a worker thread, and packing its outcome for the event loop."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import time
import traceback as tb_module
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dask.utils import typename

from conveyor.protocol import FunctionStore, build_task, pack_exception
from conveyor.rpc.sizes import nbytes as size_of

logger = logging.getLogger("conveyor.worker")


@dataclass(slots=True)
class Outcome:
    """What happened when a task ran. Exceptions travel pickled, as opaque bytes."""

    ok: bool
    start: float
    stop: float
    value: Any = None
    nbytes: int = 0
    type: str | None = None
    exception: bytes | None = None
    traceback: bytes | None = None
    exception_text: str = ""
    traceback_text: str = ""


def warm_imports(names: Iterable[str]) -> list[str]:
    """Import each of ``names`` that is installed; return the ones now imported.

    Otherwise the first task or transfer that needs a module imports it inside its own
    time: numpy costs about 50 ms, as long as receiving 100 MB. A module that is not
    installed is skipped; one whose import fails is logged and skipped, and the worker
    runs on (a task that needs it will fail with the real error).
    """
    imported = []
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                continue
            importlib.import_module(name)
        except Exception:
            logger.warning("Importing %r at start failed", name, exc_info=True)
            continue
        imported.append(name)
    return imported


def run_task(
    key: Any, run_spec: tuple[str | None, Any], deps: dict[Any, Any], functions: FunctionStore
) -> Outcome:
    """Deserialize and run one task with its dependencies' values (on a worker thread)."""
    start = time.time()
    try:
        value = build_task(key, run_spec, functions)(deps)
        nbytes, kind = size_of(value), typename(type(value))
    except BaseException as e:  # SystemExit from a task fails the task, not the thread
        stop = time.time()
        user_tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
        exc_bytes, tb_bytes = pack_exception(e, user_tb)
        return Outcome(
            False,
            start,
            stop,
            exception=exc_bytes,
            traceback=tb_bytes,
            exception_text=f"{type(e).__name__}: {e}",
            traceback_text="".join(tb_module.format_exception(e)),
        )
    stop = time.time()
    return Outcome(True, start, stop, value, nbytes, kind)
