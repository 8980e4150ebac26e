"""Scheduler extensions that every scheduler has unless told otherwise.

Each entry maps a name to a callable ``make(scheduler) -> extension``; the extension adds
its handlers to ``scheduler.handlers``. ``Scheduler(extensions={...})`` replaces this set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.server.scheduler import Scheduler

DEFAULT_EXTENSIONS: dict[str, Callable[[Scheduler], Any]] = {}
