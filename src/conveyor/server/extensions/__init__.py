"""Scheduler extensions that every scheduler has unless told otherwise.

Each entry maps a name to a callable ``make(scheduler) -> extension``; the extension adds
its handlers to ``scheduler.handlers``. ``Scheduler(extensions={...})`` replaces this set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from conveyor.server.extensions.control import ControlExtension
from conveyor.server.extensions.coordination import CoordinationExtension
from conveyor.server.extensions.datasets import DatasetsExtension
from conveyor.server.extensions.dump import DumpExtension
from conveyor.server.extensions.events import EventsExtension
from conveyor.server.extensions.explain import ExplainExtension
from conveyor.server.extensions.logs import LogsExtension
from conveyor.server.extensions.memory import MemoryExtension
from conveyor.server.extensions.metadata import MetadataExtension
from conveyor.server.extensions.nannies import NannyExtension
from conveyor.server.extensions.progress import ProgressExtension
from conveyor.server.extensions.task_stream import TaskStreamExtension

if TYPE_CHECKING:
    from conveyor.server.scheduler import Scheduler

DEFAULT_EXTENSIONS: dict[str, Callable[[Scheduler], Any]] = {
    "coordination": CoordinationExtension,
    "events": EventsExtension,
    "explain": ExplainExtension,
    "logs": LogsExtension,
    "control": ControlExtension,
    "datasets": DatasetsExtension,
    "dump": DumpExtension,
    "memory": MemoryExtension,
    "metadata": MetadataExtension,
    "nannies": NannyExtension,
    "progress": ProgressExtension,
    "task-stream": TaskStreamExtension,
}
