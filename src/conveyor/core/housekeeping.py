"""The scheduler's periodic housekeeping: forgetting task prefixes with no task left,
and reconciling what each worker holds with what the scheduler believes it holds.

Neither runs per task. The shell calls them every ``delete_interval`` and every
``synchronize_worker_interval`` (``Scheduler(...)`` keywords).

Forgetting prefixes
-------------------
A task prefix (``"inc"``) carries the learned duration and the per-state counts the
dashboard shows. A prefix whose last task group is forgotten is noted in
``empty_prefixes`` with the time; :class:`~conveyor.core.events.ForgetPrefixes` drops
those empty for longer than the interval. Their learned durations are remembered (the last
:data:`REMEMBERED_DURATIONS` of them), so that the same function submitted again is
placed as well as before. The cost is O(prefixes forgotten), never a scan.

Reconciling memory
------------------
The scheduler sends a worker the keys it believes the worker holds; the worker answers
with those it does not hold (``missing``) and those it holds that were not named
(``extra``). Both streams are ordered, which makes the answer safe to act on:

* a key the scheduler named was, when named, reported held by the worker (or scattered
  to it, after the data arrived); if the worker no longer has it when it reads the
  request, it lost it. The scheduler drops that replica, and a key left with no
  replica is recomputed, as for any lost data.
* a key the worker holds that the scheduler has forgotten by the time the answer
  arrives leaked: the worker is told to free it. An extra key of a task the scheduler
  still knows is left alone (its report may have crossed the request), to be freed
  with the task.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING

from conveyor.core import events as ev
from conveyor.core.instructions import FreeKeys
from conveyor.core.types import Key

if TYPE_CHECKING:
    from conveyor.core.scheduler import SchedulerState
    from conveyor.core.transitions import Recs

#: learned durations of forgotten prefixes kept for their next use
REMEMBERED_DURATIONS = 10_000


class PrefixMemory:
    """Durations of forgotten prefixes, the least recently forgotten dropped first."""

    __slots__ = ("_durations",)

    def __init__(self) -> None:
        self._durations: OrderedDict[str, float] = OrderedDict()

    def remember(self, name: str, duration: float) -> None:
        """Keep ``duration`` for prefix ``name``."""
        self._durations[name] = duration
        self._durations.move_to_end(name)
        if len(self._durations) > REMEMBERED_DURATIONS:
            self._durations.popitem(last=False)

    def recall(self, name: str) -> float | None:
        """The duration remembered for ``name`` (forgetting it), or None."""
        return self._durations.pop(name, None)

    def __len__(self) -> int:
        return len(self._durations)


def forget_prefixes(s: SchedulerState, e: ev.ForgetPrefixes) -> None:
    """Forget the prefixes with no task since before ``e.emptied_before``."""
    empty = s.empty_prefixes
    while empty:
        name, since = next(iter(empty.items()))
        if since > e.emptied_before:
            break  # kept in the order they emptied: the rest are younger
        del empty[name]
        prefix = s.task_prefixes.pop(name)
        if prefix.duration_average is not None:
            s.prefix_memory.remember(name, prefix.duration_average)


def memory_of(s: SchedulerState, address: str) -> list[Key]:
    """The keys the scheduler believes ``address`` holds (what a sync request names)."""
    ws = s.workers.get(address)
    return [] if ws is None else [ts.key for ts in ws.has_what]


def memory_synced(s: SchedulerState, e: ev.WorkerMemorySynced) -> None:
    """Act on a worker's answer to a sync request (see the module docstring)."""
    ws = s.workers.get(e.worker)
    if ws is None:
        return  # removed since: its replicas went with it
    recs: Recs = {}
    for key in e.missing:
        ts = s.tasks.get(key)
        if ts is None or ws not in ts.who_has:
            continue
        s._remove_replica(ts, ws)
        if ts.state == "memory" and not ts.who_has:
            s._transition(ts, "released", recs, force=True, lost=True)
    leaked = [key for key in e.extra if key not in s.tasks]
    if leaked:
        s._out.append(FreeKeys(e.worker, leaked))
    s._transitions(recs)


class TaskDurations(MutableMapping[str, float]):
    """The expected run time per key prefix, in seconds (``Scheduler.task_duration``):
    learned from finished tasks, or set by an operator.

    Setting ``durations["load"] = 2.0`` makes 2 s the estimate of that prefix now (later
    runs still refine it) and its default whenever it is seen afresh; deleting an entry
    removes that default (a learned estimate cannot be deleted, only set).
    """

    __slots__ = ("_s",)

    def __init__(self, s: SchedulerState) -> None:
        self._s = s

    def __getitem__(self, name: str) -> float:
        prefix = self._s.task_prefixes.get(name)
        if prefix is not None and prefix.duration_average is not None:
            return prefix.duration_average
        return self._s.default_task_durations[name]

    def __setitem__(self, name: str, seconds: float) -> None:
        if not isinstance(name, str):
            raise TypeError(f"a key prefix is a str, not {type(name).__name__}")
        value = float(seconds)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a duration is a finite number of seconds >= 0, not {seconds!r}")
        self._s.default_task_durations[name] = value
        prefix = self._s.task_prefixes.get(name)
        if prefix is not None:
            prefix.duration_average = value

    def __delitem__(self, name: str) -> None:
        if name not in self._s.default_task_durations:
            if name in self:
                raise KeyError(f"{name!r} was learned, not set: set another value instead")
            raise KeyError(name)
        del self._s.default_task_durations[name]

    def _names(self) -> set[str]:
        learned = {n for n, p in self._s.task_prefixes.items() if p.duration_average is not None}
        return learned | set(self._s.default_task_durations)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._names()))

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"TaskDurations({dict(self)!r})"
