"""Small shared type aliases for the core."""

from __future__ import annotations

from typing import TypeAlias

#: A task key, as dask spells them: a string, a number, or a tuple of those.
Key: TypeAlias = str | int | float | tuple["Key", ...]

#: Scheduler-side task states.
TaskStateName: TypeAlias = str

#: Task priority: (negated user priority, submission generation, graph order).
Priority: TypeAlias = tuple[int, ...]

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
