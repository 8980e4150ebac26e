"""Invariant checks for the scheduler state (run after every event when validating)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from conveyor.core.records import EMPTY
from conveyor.core.restrictions import signature
from conveyor.core.transitions import ACTIVE

if TYPE_CHECKING:
    from conveyor.core.records import TaskState
    from conveyor.core.scheduler import SchedulerState


def _check(cond: bool, ts: object, what: str) -> None:
    if not cond:
        raise AssertionError(f"{ts!r}: {what}")


def _validate_task(s: SchedulerState, ts: TaskState) -> None:
    state = ts.state
    _check(s.tasks.get(ts.key) is ts, ts, "not registered under its key")
    for dep in ts.dependencies:
        _check(ts in dep.dependents, ts, f"missing from dependents of {dep!r}")
        _check(dep.state != "forgotten", ts, f"depends on forgotten {dep!r}")
    for dts in ts.dependents:
        _check(ts in dts.dependencies, ts, f"missing from dependencies of {dts!r}")
    for w in ts.waiters:
        _check(w in ts.dependents, ts, f"waiter {w!r} is not a dependent")
        _check(w.state in ACTIVE, ts, f"waiter {w!r} is not active")
    for cs in ts.who_wants:
        _check(ts in cs.wants_what, ts, f"{cs!r} does not list it")
    _check((state == "processing") == (ts.processing_on is not None), ts, "processing_on")
    _check((state == "memory") == bool(ts.who_has), ts, "who_has vs memory")
    _check((state == "queued") == (ts in s.queued), ts, "queued set")
    _check((state == "no-worker") == (ts in s.unrunnable), ts, "unrunnable set")
    if state == "waiting":
        pending = [d for d in ts.dependencies if d.state != "memory"]
        _check(ts.nwaiting == len(pending), ts, f"nwaiting {ts.nwaiting} != {len(pending)}")
        _check(bool(pending), ts, "waiting on nothing")
        for dep in pending:
            _check(dep.state != "erred", ts, f"waiting on erred {dep!r}")
    else:
        _check(ts.nwaiting == 0, ts, "nwaiting outside waiting")
    for name in ("dependents", "waiters", "who_has", "erred_on"):
        value = getattr(ts, name)
        _check(value is EMPTY or bool(value), ts, f"empty {name} not shared")
    _check(len(set(ts.who_wants)) == len(ts.who_wants), ts, "a client wants it twice")
    if state in ACTIVE:
        for dep in ts.dependencies:
            _check(ts in dep.waiters, ts, f"not among waiters of {dep!r}")
    if state in ("processing", "queued", "no-worker"):
        for dep in ts.dependencies:
            _check(dep.state == "memory", ts, f"dependency {dep!r} not in memory")
    if state == "processing":
        ws = ts.processing_on
        assert ws is not None
        _check(ts in ws.processing, ts, "absent from its worker's processing")
        _check(s.workers.get(ws.address) is ws, ts, "processing on a removed worker")
    for ws in ts.who_has:
        _check(ts in ws.has_what, ts, f"absent from has_what of {ws!r}")
        _check(s.workers.get(ws.address) is ws, ts, "held by a removed worker")
    if state == "erred":
        _check(ts.exception_blame is not None, ts, "erred without blame")
    need = ts.resource_restrictions
    if need is not None:
        parked = s.resource_book.waiting.get(signature(need))
        _check((state == "no-worker") == (parked is not None and ts in parked), ts, "parked")


def validate_scheduler(s: SchedulerState) -> None:
    """Raise AssertionError if any invariant of ``s`` is broken."""
    for ts in s.tasks.values():
        _validate_task(s, ts)
    nthreads = 0
    for address, ws in s.workers.items():
        nthreads += ws.nthreads
        _check(ws.address == address, ws, "registered under another address")
        _check(ws.long_running <= set(ws.processing), ws, "long-running but not processing")
        n = len(ws.processing) - len(ws.long_running)
        if ws.status == "running":
            _check((address in s.idle) == (n < ws.nthreads), ws, "idle set")
            _check((ws in s.saturated) == (n > ws.nthreads), ws, "saturated set")
            _check((address in s.open_slots) == s._has_room(ws), ws, "open-slot set")
        else:  # retiring or paused: connected, but out of placement
            placed = address in s.idle or ws in s.saturated or address in s.open_slots
            _check(not placed, ws, f"a {ws.status} worker in a placement set")
            _check((ws.status == "paused") == (s.paused.get(address) is ws), ws, "paused")
            if ws.status != "paused":  # what a paused one has waits there
                _check(s.retiring.get(address) is ws, ws, f"status {ws.status} but not retiring")
                _check(not ws.processing, ws, "a retiring worker is given tasks")
        _check(math.isclose(ws.occupancy, sum(ws.processing.values()), abs_tol=1e-6), ws, "occ")
        for ts in ws.processing:
            _check(ts.processing_on is ws, ws, f"{ts!r} processing elsewhere")
        for ts in ws.has_what:
            _check(ws in ts.who_has, ws, f"{ts!r} does not list it")
        _check(ws.nbytes == sum(max(t.nbytes, 0) for t in ws.has_what), ws, "nbytes")
        used: dict[str, float] = {}
        for ts in ws.processing:
            for name, amount in (ts.resource_restrictions or {}).items():
                used[name] = used.get(name, 0.0) + amount
        for name in set(used) | set(ws.used_resources):
            held = ws.used_resources.get(name, 0.0)
            _check(math.isclose(held, used.get(name, 0.0), abs_tol=1e-6), ws, f"used {name}")
            _check(held <= ws.resources.get(name, 0.0) + 1e-6, ws, f"over-used {name}")
    _check(nthreads == s.total_nthreads, s, "total_nthreads")
    for address, ws in s.retiring.items():
        _check(s.workers.get(address) is ws, ws, "retiring but not registered")
    _check(sorted(w.address for w in s._ring) == sorted(s.workers), s, "placement ring")
    _validate_counts_and_links(s)
    _validate_prefix_states(s)
    _check(not (s.queued and s.open_slots), s, "queued tasks while a worker has open slots")
    for heap in s.resource_book.waiting.values():
        _check(bool(heap), s, "empty resource queue kept")
        for ts in heap:
            _check(ts.state == "no-worker", ts, "waits for resources outside no-worker")
    for cs in s.clients.values():
        for ts in cs.wants_what:
            _check(cs in ts.who_wants, cs, f"{ts!r} does not list it")
    users: dict[str, int] = {}
    for ts in s.tasks.values():
        if ts.function is not None:
            users[ts.function] = users.get(ts.function, 0) + 1
    for blob in s.functions.values():
        if blob.requires is not None:
            users[blob.requires] = users.get(blob.requires, 0) + 1
    for bid, blob in s.functions.items():
        _check(blob.refs == users.get(bid, 0) > 0, blob, f"{bid!r}: refs vs its users")
    _check(set(users) <= set(s.functions), s, "a task or chunk names a dropped blob")


def _validate_counts_and_links(s: SchedulerState) -> None:
    """The bookkeeping that spares periodic checks and removals a scan: the count of
    processing tasks (``is_idle``), the ttl order, the ring's index, the reverse links
    between task groups and the holders of each shared blob."""
    busy = sum(len(ws.processing) for ws in s.workers.values())
    _check(s.nprocessing == busy, s, f"nprocessing {s.nprocessing} != {busy}")
    _check(s._ring.consistent(), s, "placement ring index")
    for problem in s._liveness.problems(s.workers):
        _check(False, s, problem)
    groups = s.task_groups
    for name, g in groups.items():
        _check(g.name == name, g, "registered under another name")
        for d in g.dependencies:
            _check(groups.get(d.name) is d, g, f"depends on forgotten group {d!r}")
            _check(g in d.dependents, g, f"missing from dependents of {d!r}")
        for d in g.dependents:
            _check(groups.get(d.name) is d, g, f"forgotten group {d!r} among dependents")
            _check(g in d.dependencies, g, f"missing from dependencies of {d!r}")
    for address, ws in s.workers.items():
        for fid in ws.functions:
            blob = s.functions.get(fid)
            _check(blob is not None, ws, f"holds dropped blob {fid!r}")
            assert blob is not None
            _check(blob.holders.get(address) is ws, ws, f"not among holders of {fid!r}")


def _validate_prefix_states(s: SchedulerState) -> None:
    """Each prefix's per-state counts (the dashboard's snapshot) match its live tasks."""
    counts: dict[str, dict[str, int]] = {}
    for ts in s.tasks.values():
        per = counts.setdefault(ts.group.prefix.name, {})
        per[ts.state] = per.get(ts.state, 0) + 1
    ngroups: dict[str, int] = {}
    for g in s.task_groups.values():
        ngroups[g.prefix.name] = ngroups.get(g.prefix.name, 0) + 1
        _check(s.task_prefixes.get(g.prefix.name) is g.prefix, g, "its prefix was forgotten")
    for name, prefix in s.task_prefixes.items():
        _check(prefix.ngroups == ngroups.get(name, 0), prefix, "wrong count of groups")
        _check((prefix.ngroups == 0) == (name in s.empty_prefixes), prefix, "empty_prefixes wrong")
        live = {k: v for k, v in prefix.states.items() if v and k != "forgotten"}
        _check(live == counts.get(name, {}), prefix, f"state counts {live} != {counts.get(name)}")
        _check(min(prefix.states.values()) >= 0, prefix, "negative state count")
