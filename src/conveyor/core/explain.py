"""Why a task is where it is: one sentence for ``Client.explain(key)``.

A pure function of the scheduler's state, the key and the caller's clock. It reads the
state and changes nothing; its cost is at most linear in what it looks at (the queue of
root-ish tasks, the transition log), which is fine for a diagnostic asked for by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from conveyor.core.restrictions import could_fit

if TYPE_CHECKING:
    from conveyor.core.records import TaskState, WorkerInfo
    from conveyor.core.scheduler import SchedulerState

#: keys or workers named in a sentence before the rest are counted
NAMED = 3


def explain(s: SchedulerState, key: Any, now: float) -> str:
    """One sentence saying why task ``key`` is not running, or what it is doing."""
    ts = s.tasks.get(key)
    if ts is None:
        return (
            f"{key!r} is not known to the scheduler: it was never submitted, or it was "
            "released and forgotten"
        )
    state = ts.state
    if state == "waiting":
        return _waiting(ts)
    if state in ("queued", "no-worker") and not s.workers:
        return f"{key!r} cannot start yet: no worker is connected"
    if state == "queued":
        ahead = sum(1 for t in s.queued if t.priority < ts.priority)
        return (
            f"{key!r} is queued behind {ahead} other task{_s(ahead)}: root-task queuing "
            "holds tasks back until a worker has a free slot"
        )
    if state == "no-worker":
        return f"{key!r} cannot start yet: {_no_worker(s, ts)}"
    if state == "processing":
        return _processing(s, ts, now)
    if state == "memory":
        holders = sorted(ws.address for ws in ts.who_has)
        n = len(holders)
        return f"{key!r} is in memory on {n} worker{_s(n)}: {_list(holders, repr_=False)}"
    if state == "erred":
        blame = ts.exception_blame or ts
        text = blame.exception_text or "(the error carried no text)"
        if blame is ts:
            return f"{key!r} erred: {text}"
        return f"{key!r} erred because its dependency {blame.key!r} failed: {text}"
    if state == "released":
        return f"{key!r} is released: no client holds a future for it and no waiting task needs it"
    return f"{key!r} is {state}"


def _waiting(ts: TaskState) -> str:
    pending = [d for d in ts.dependencies if d.state != "memory"]
    pending.sort(key=lambda d: d.priority)
    n, total = len(pending), len(ts.dependencies)
    shown = [f"{d.key!r} ({d.state})" for d in pending[:NAMED]]
    more = n - len(shown)
    listed = _join(shown + ([f"{more} more"] if more else []))
    noun = "dependency" if total == 1 else "dependencies"
    return f"{ts.key!r} is waiting for {n} of its {total} {noun}: {listed}"


def _processing(s: SchedulerState, ts: TaskState, now: float) -> str:
    ws = ts.processing_on
    assert ws is not None
    since = s.transition_log.last_time(ts.key, "processing")
    where = _worker(ws)
    if since is None:
        return f"{ts.key!r} is processing on {where} (since when: no longer in the transition log)"
    seconds = max(now - since, 0.0)
    return f"{ts.key!r} is processing on {where}, sent there {seconds:.1f} s ago"


def _no_worker(s: SchedulerState, ts: TaskState) -> str:
    need = ts.resource_restrictions
    named = ts.worker_restrictions
    pool: list[WorkerInfo] | None = None
    if named is not None:
        present = s._named_workers(named)
        if not present and not ts.loose_restrictions:
            return (
                f"it may only run on {_list(sorted(named, key=str))}, and none of them is connected"
            )
        pool = present or None
        loose = ts.loose_restrictions
        if pool is not None and need and loose and not any(could_fit(ws, need) for ws in pool):
            pool = None
    if not need:
        return "no worker can run it now"
    wanted = _amounts(need)
    if pool is not None:
        where = _list(sorted(ws.address for ws in pool), repr_=False)
        if not any(could_fit(ws, need) for ws in pool):
            return f"it may only run on {where}, which lack{_s(-len(pool))} {wanted}"
        return (
            f"it needs {wanted} free on {where}, where other tasks hold it; it starts "
            "when enough comes free"
        )
    book = s.resource_book
    short = []
    for name, amount in need.items():
        most = book.most(name)
        if most < amount:
            if most:
                short.append(
                    f"no worker has enough {name}: it needs {amount:g}, the most any "
                    f"worker has is {most:g}"
                )
            else:
                short.append(f"no worker has any {name} (it needs {amount:g})")
    if short:
        return "; ".join(short) + ". It starts when such a worker joins"
    holders = book.candidates(need)
    if not holders:
        return f"no single worker has all of {wanted}. It starts when such a worker joins"
    n = len(holders)
    where = _list(sorted(w.address for w in holders), repr_=False)
    return (
        f"the {n} worker{_s(n)} with {wanted} ({where}) hold it for other tasks; it starts "
        "when enough comes free"
    )


def _worker(ws: WorkerInfo) -> str:
    if ws.name != ws.address:
        return f"{ws.address} (name {ws.name!r})"
    return ws.address


def _amounts(need: dict[str, float]) -> str:
    return ", ".join(f"{name}={amount:g}" for name, amount in sorted(need.items()))


def _list(items: Iterable[Any], repr_: bool = True) -> str:
    items = list(items)
    shown = [repr(i) if repr_ else str(i) for i in items[:NAMED]]
    more = len(items) - len(shown)
    return _join(shown + ([f"{more} more"] if more else []))


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _s(n: int) -> str:
    """The plural ending for ``n`` things (a verb's ending for ``-n``)."""
    if n < 0:
        return "s" if n == -1 else ""
    return "" if n == 1 else "s"
