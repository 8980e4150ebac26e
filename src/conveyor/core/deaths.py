"""Which tasks a worker's death counts against (``allowed_failures``, ``KilledWorker``).

Theory of operation
-------------------
A worker holds more tasks than it has threads: besides those it runs, some wait for a
thread or for their dependencies to arrive. Only a task it was *running* can have
killed it; a task that was merely queued or prefetched there is innocent, and is
rescheduled without a mark against it. A task marked by more than ``allowed_failures``
deaths fails with ``KilledWorker``, naming the task, the last worker and the cause.

The scheduler cannot tell from a closed connection which tasks were running; the
worker's nanny can. The worker's task threads note the task each one runs in a small
file shared with the nanny (:mod:`conveyor.server.running_file`), and the nanny, once
the process has ended, reports :class:`~conveyor.core.events.WorkerDied` with how it
ended (a signal, an exit code, the memory limit) and those tasks. The report and the
closed connection arrive in either order:

* **report first**: the worker is removed with the verdict at once;
* **connection first**: the worker's tasks are rescheduled at once (a death costs no
  waiting), and kept in ``awaiting_verdict`` until the report comes; the running ones
  are then marked wherever they are by now (and fail there if they crossed the limit).
  If no report comes within :data:`VERDICT_WAIT` seconds (the nanny died too), every
  task the worker had is marked.

A worker whose peers keep failing to fetch data it holds while it still answers the
scheduler (:func:`unserving`) is removed too, and told to close.

Without a nanny, and for a worker dropped for silence (``worker-ttl``), nothing tells
which tasks were running, and every task the worker had is marked: the conservative
rule, under which a poison task still ends as ``KilledWorker`` and an innocent one
fails only if it shared ``allowed_failures + 1`` deaths with a poison one. A worker that
said it was closing, or that the scheduler closed, marks nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from conveyor.core import events as ev
from conveyor.core.control import fail_where_it_is
from conveyor.core.records import TaskState, WorkerInfo
from conveyor.core.transitions import ACTIVE, Recs
from conveyor.core.types import Key

if TYPE_CHECKING:
    from conveyor.core.scheduler import SchedulerState

__all__ = [
    "UNSERVED_LIMIT",
    "UNSERVED_SPACING",
    "UNSERVED_WINDOW",
    "VERDICT_WAIT",
    "expire_verdicts",
    "on_removal",
    "unserving",
    "worker_died",
]

#: seconds to wait for a nanny's report on a worker whose connection closed, after
#: which every task the worker had is marked
VERDICT_WAIT = 5.0
#: a worker whose peers failed this many times to fetch data it holds, each within
#: UNSERVED_WINDOW seconds of the previous failure, is removed (and told to close)
UNSERVED_LIMIT = 3
UNSERVED_WINDOW = 600.0
#: reports closer than this to the last failure counted are the same failure (one
#: failed fetch of many keys is reported key by key)
UNSERVED_SPACING = 0.1


def on_removal(
    s: SchedulerState,
    address: str,
    running: list[TaskState],
    e: ev.RemoveWorker,
    report: ev.WorkerDied | None,
    nanny: bool,
    silent: bool,
    recs: Recs,
) -> None:
    """Reschedule the tasks a removed worker had (``running``, in priority order),
    marking those to blame now, or keeping them until its nanny's report."""
    blamed: Iterable[TaskState] = ()
    cause = e.reason
    if e.expected or (report is not None and not report.died):
        pass
    elif report is not None:
        blamed, cause = _named(running, report.executing), report.cause
    elif nanny and not silent:
        s.awaiting_verdict[address] = (e.now, running)
    else:
        blamed = running
    blamed = set(blamed)
    for ts in running:
        text = _mark(s, ts, address, cause) if ts in blamed else None
        if text is None:
            s._transition(ts, "released", recs, force=True)
        else:
            s._transition(ts, "erred", recs, worker=address, exception_text=text)


def worker_died(s: SchedulerState, e: ev.WorkerDied) -> None:
    """A nanny's report: remove the worker with its verdict, or, if it is gone
    already, mark the tasks it was running wherever they are now."""
    if e.address in s.workers:
        s._remove_worker(ev.RemoveWorker(e.now, e.address, e.cause), report=e)
        return
    pending = s.awaiting_verdict.pop(e.address, None)
    if pending is not None and e.died:
        _mark_later(s, e.address, e.cause, _named(pending[1], e.executing))


def expire_verdicts(s: SchedulerState, now: float) -> None:
    """Mark every task of the workers whose nanny did not report in time."""
    waiting = s.awaiting_verdict
    while waiting:
        address, (since, tasks) = next(iter(waiting.items()))  # oldest first
        if now - since < VERDICT_WAIT:
            return
        del waiting[address]
        cause = f"its connection closed, and its nanny did not say why within {VERDICT_WAIT:g} s"
        _mark_later(s, address, cause, tasks)


def unserving(ws: WorkerInfo, now: float) -> bool:
    """Count a peer's failed fetch of data ``ws`` holds; whether ``ws`` is to go.

    A worker that still answers the scheduler but serves no data (its listener broken,
    say) would otherwise have every key it is asked for recomputed, on itself again,
    without end: each failed fetch costs a peer ``comm.timeouts.tcp``, so a few in a
    row mean it is broken, not slow.
    """
    count, last = ws.unserved
    if count and 0 <= now - last < UNSERVED_SPACING:
        return False
    count = count + 1 if now - last <= UNSERVED_WINDOW else 1
    ws.unserved = (count, now)
    return count >= UNSERVED_LIMIT


def _named(tasks: list[TaskState], keys: list[Key] | None) -> list[TaskState]:
    """The tasks among ``tasks`` whose keys are in ``keys`` (all of them if unknown)."""
    if keys is None:
        return tasks
    wanted = set(keys)
    return [ts for ts in tasks if ts.key in wanted]


def _mark(s: SchedulerState, ts: TaskState, address: str, cause: str) -> str | None:
    """Count a death against ``ts``; the KilledWorker text if it crossed the limit."""
    ts.suspicious += 1
    if ts.suspicious <= s.allowed_failures:
        return None
    return (
        f"KilledWorker: attempted to run task {ts.key!r} on {ts.suspicious} different "
        f"workers, but all those workers died while running it; the last was {address} "
        f"({cause})"
    )


def _mark_later(s: SchedulerState, address: str, cause: str, tasks: list[TaskState]) -> None:
    """Mark tasks rescheduled since their worker died: those still to be computed and
    over the limit fail where they are now."""
    recs: Recs = {}
    for ts in tasks:
        if s.tasks.get(ts.key) is not ts or ts.state not in ACTIVE:
            continue  # forgotten, computed elsewhere meanwhile, or failed already
        text = _mark(s, ts, address, cause)
        if text is None:
            continue
        fail_where_it_is(s, ts, text, recs)  # running again elsewhere: dropped there
    s._transitions(recs)
