"""Cluster control in the scheduler's state machine: retiring and pausing workers,
copying and dropping replicas, retrying erred tasks and forgetting everything (``Client.restart``).

Theory of operation
-------------------
A *retiring* worker (``ws.status == "closing_gracefully"``, listed in
``SchedulerState.retiring``) stays connected and keeps its data, but placement passes it
over: it leaves the idle, saturated and open-slot sets, ``_decide_worker`` filters it
out, and the tasks it was running are released (not counted against their allowed
failures) and placed elsewhere. The shell then copies the keys only retiring workers
hold to running workers (:class:`~conveyor.core.events.CopyReplicas`, planned by
:mod:`conveyor.core.replicas`) and, once every key has a copy elsewhere, closes the
workers, whose removal then loses nothing. :class:`~conveyor.core.events.CancelRetirement`
puts a worker back to work.

Copies are asked of the recipient (``AcquireReplicas``); the scheduler counts one only
when the worker reports it (``WorkerAddKeys``), so a copy that fails is simply missing.
:class:`~conveyor.core.events.DropReplicas` never drops a key's last copy.

A *paused* worker (``ws.status == "paused"``: its memory crossed the pause threshold,
:class:`~conveyor.core.events.WorkerPaused`) leaves placement the same way, but keeps
what it was sent: the tasks wait there until it resumes, as they would wait for a
thread. It may be retired while paused.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from conveyor.core import events as ev
from conveyor.core.instructions import AcquireReplicas, FreeKeys, KeysCancelled
from conveyor.core.records import TaskState, WorkerInfo

if TYPE_CHECKING:
    from conveyor.core.scheduler import SchedulerState
    from conveyor.core.transitions import Recs

#: the status of a worker that is being retired
RETIRING = "closing_gracefully"
#: the status of a worker whose memory is over its pause threshold
PAUSED = "paused"


def handlers(s: SchedulerState) -> dict[type, Callable[[Any], None]]:
    """The handlers of the cluster-control events, bound to ``s``."""
    return {
        ev.RetireWorkers: partial(retire_workers, s),
        ev.CancelRetirement: partial(cancel_retirement, s),
        ev.CopyReplicas: partial(copy_replicas, s),
        ev.DropReplicas: partial(drop_replicas, s),
        ev.RetryKeys: partial(retry_keys, s),
        ev.ForgetAll: partial(forget_all, s),
        ev.WorkerPaused: partial(worker_paused, s),
        ev.OperatorTransition: partial(operator_transition, s),
    }


def retire_workers(s: SchedulerState, e: ev.RetireWorkers) -> None:
    """Stop placing tasks on these workers and move their running tasks elsewhere."""
    recs: Recs = {}
    for address in e.addresses:
        ws = s.workers.get(address)
        if ws is None or ws.status not in ("running", PAUSED):
            continue
        s.paused.pop(address, None)
        ws.status = RETIRING
        s.retiring[address] = ws
        s.idle.pop(address, None)
        s.open_slots.pop(address, None)
        s.saturated.discard(ws)
        # a graceful move, not a failure: the tasks' suspicious counts stay as they are
        for ts in sorted(ws.processing, key=lambda t: t.priority):
            s._transition(ts, "released", recs, force=True)
    s.last_activity = e.now
    s._transitions(recs)


def cancel_retirement(s: SchedulerState, e: ev.CancelRetirement) -> None:
    """Put retiring workers back to work."""
    back = []
    for address in e.addresses:
        ws = s.retiring.pop(address, None)
        if ws is None or s.workers.get(address) is not ws:
            continue
        back.append(ws)
    _back_to_work(s, back)


def worker_paused(s: SchedulerState, e: ev.WorkerPaused) -> None:
    """A paused worker leaves placement (what it has waits there); a resumed one
    comes back to it."""
    ws = s.workers.get(e.address)
    if ws is None:
        return
    if e.paused and ws.status == "running":
        ws.status = PAUSED
        s.paused[e.address] = ws
        s.idle.pop(e.address, None)
        s.open_slots.pop(e.address, None)
        s.saturated.discard(ws)
    elif not e.paused and ws.status == PAUSED:
        _back_to_work(s, [ws])


def _back_to_work(s: SchedulerState, workers: list[WorkerInfo]) -> None:
    """Put ``workers`` (retiring or paused) back into placement, and give them work."""
    if not workers:
        return
    for ws in workers:
        ws.status = "running"
        s.paused.pop(ws.address, None)
        s._update_worker_sets(ws)
    recs: Recs = {}
    for ts in list(s.unrunnable):
        if ts.resource_restrictions is None:  # those are offered by _fill_slots
            recs[ts] = "processing"
    s._transitions(recs)
    for ws in workers:
        s._fill_slots(ws, recs)
        s._transitions(recs)


def copy_replicas(s: SchedulerState, e: ev.CopyReplicas) -> None:
    """Ask each recipient to fetch the keys it lacks from the workers holding them."""
    for address, keys in e.copies.items():
        ws = s.workers.get(address)
        if ws is None:
            continue
        who_has: dict[Any, list[str]] = {}
        nbytes: dict[Any, int] = {}
        for key in keys:
            ts = s.tasks.get(key)
            if ts is None or ts.state != "memory" or ws in ts.who_has:
                continue
            who_has[key] = [w.address for w in ts.who_has]
            nbytes[key] = ts.nbytes
        if who_has:
            s._out.append(AcquireReplicas(address, who_has, nbytes))


def drop_replicas(s: SchedulerState, e: ev.DropReplicas) -> None:
    """Free copies of keys on workers, keeping at least one copy of each key."""
    for address, keys in e.replicas.items():
        ws = s.workers.get(address)
        if ws is None:
            continue
        dropped = []
        for key in keys:
            ts = s.tasks.get(key)
            if ts is None or ts.state != "memory" or ws not in ts.who_has:
                continue
            if len(ts.who_has) < 2:
                continue
            s._remove_replica(ts, ws)
            dropped.append(key)
        if dropped:
            s._out.append(FreeKeys(address, dropped))


def retry_keys(s: SchedulerState, e: ev.RetryKeys) -> None:
    """Release the erred tasks named and the erred dependencies they blame, all before
    any moves on (a task released first would see its dependency still erred), so the
    wanted ones run again."""
    erred: list[TaskState] = []
    seen: set[Any] = set()
    stack = list(e.keys)
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        ts = s.tasks.get(key)
        if ts is None or ts.state != "erred":
            continue
        erred.append(ts)
        stack.extend(dep.key for dep in ts.dependencies if dep.state == "erred")
    recs: Recs = {}
    for ts in erred:
        s._transition(ts, "released", recs)
    s.last_activity = e.now
    s._transitions(recs)


#: where ``Scheduler.transition`` may move a task
OPERATOR_FINISHES = ("released", "erred")


def operator_transition(s: SchedulerState, e: ev.OperatorTransition) -> None:
    """Move a task where an operator says (:class:`~conveyor.core.events.OperatorTransition`)."""
    ts = s.tasks[e.key]
    if e.stimulus_id:
        s._stimulus = e.stimulus_id
    recs: Recs = {}
    if e.finish == "released":
        s._transition(ts, "released", recs, force=True)
    elif e.finish == "erred":
        fail_where_it_is(s, ts, e.reason or "marked erred by the scheduler's operator", recs)
    else:
        raise ValueError(f"an operator may move a task to {OPERATOR_FINISHES}, not {e.finish!r}")
    s.last_activity = e.now
    s._transitions(recs)


def fail_where_it_is(s: SchedulerState, ts: TaskState, text: str, recs: Recs) -> None:
    """Make ``ts`` fail with ``text`` from any state but forgotten: a task in memory
    drops its data, one running on a worker is freed there, and its dependents fail."""
    if ts.state == "memory":
        s._transition(ts, "released", recs, force=True)
        recs.pop(ts, None)
    ts.exception = ts.traceback = None
    ts.exception_text, ts.traceback_text = text, ""
    ts.exception_blame = ts
    where = ts.processing_on
    if where is not None:  # running on a worker: that worker drops it
        s._out.append(FreeKeys(where.address, [ts.key]))
        s._transition(ts, "erred", recs, exception_text=text)
    else:
        s._transition(ts, "erred", recs)


def forget_all(s: SchedulerState, e: ev.ForgetAll) -> None:
    """Every client releases everything; each is told which of its keys went."""
    recs: Recs = {}
    for cs in list(s.clients.values()):
        tasks = list(cs.wants_what)
        for ts in tasks:
            s._unwant(cs, ts, recs)
        if tasks:
            s._out.append(KeysCancelled(cs.client_id, [ts.key for ts in tasks], e.reason))
    s.last_activity = e.now
    s._transitions(recs)
