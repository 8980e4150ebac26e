"""Small shared type aliases for the core."""

from __future__ import annotations

from typing import TypeAlias

#: A task key, as dask spells them: a string, a number, or a tuple of those.
Key: TypeAlias = str | int | float | tuple["Key", ...]

#: Scheduler-side task states.
TaskStateName: TypeAlias = str

#: Task priority: (negated user priority, submission generation, graph order). A user
#: priority may be any real number (``dask.annotate(priority=0.5)``); smaller sorts first.
Priority: TypeAlias = tuple[float, ...]

SCHEDULER_STATES = (
    "released",
    "waiting",
    "no-worker",
    "queued",
    "processing",
    "memory",
    "erred",
    "forgotten",
)
