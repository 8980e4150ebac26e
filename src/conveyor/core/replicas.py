"""Plans for moving data between workers: replicate, rebalance and retire, and which
workers to retire (``workers_to_close``).

Pure functions of the scheduler's state: they read it and return which copies to make
(recipient address -> keys) and which to drop (worker address -> keys); the shell
carries them out with the :class:`~conveyor.core.events.CopyReplicas` and
:class:`~conveyor.core.events.DropReplicas` events. ``pending`` (key -> recipients) names
copies asked for earlier and not yet reported: they count as made while their recipient
is running, so that planning again after a while asks only for what is still missing.

Only running workers receive copies (never a retiring one). The memory a worker holds is
the sum of its keys' sizes as the scheduler knows them (``ws.nbytes``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING

from conveyor.core.types import Key

if TYPE_CHECKING:
    from conveyor.core.records import TaskState, WorkerInfo
    from conveyor.core.scheduler import SchedulerState

#: recipient address -> keys to copy there, or worker address -> keys to drop there
Plan = dict[str, list[Key]]
#: key -> addresses of the workers asked for a copy that has not arrived yet
Pending = Mapping[Key, Collection[str]]


def running_workers(s: SchedulerState, workers: Iterable[str] | None = None) -> list[WorkerInfo]:
    """The running (not retiring) workers, all of them or those at ``workers``, by address."""
    if workers is None:
        pool = [ws for ws in s.workers.values() if ws.status == "running"]
    else:
        found = (s.workers.get(a) for a in dict.fromkeys(workers))
        pool = [ws for ws in found if ws is not None and ws.status == "running"]
    return sorted(pool, key=lambda ws: ws.address)


def _holders(s: SchedulerState, ts: TaskState, pending: Pending) -> set[str]:
    """Running workers that hold ``ts`` or were asked for a copy of it."""
    out = {ws.address for ws in ts.who_has if ws.status == "running"}
    for address in pending.get(ts.key, ()):
        ws = s.workers.get(address)
        if ws is not None and ws.status == "running":
            out.add(address)
    return out


def plan_replicate(
    s: SchedulerState,
    keys: Iterable[Key],
    n: int | None,
    workers: Iterable[str] | None = None,
    pending: Pending | None = None,
    branching_factor: int | None = None,
) -> tuple[Plan, Plan]:
    """Copies and drops that leave each key in memory on ``n`` of ``workers`` (all of
    them when ``n`` is None; at most as many as there are). New copies go to the workers
    holding the least data; surplus copies among ``workers`` are dropped from those
    holding the most. Copies outside ``workers`` are left alone.

    With ``branching_factor``, copies of a key under way never outnumber its holders
    times that factor: the copies spread as a tree, each holder feeding a few recipients
    at a time, and a caller that plans again as copies land (with ``pending``) gets the
    next level."""
    pending = pending or {}
    pool = running_workers(s, workers)
    in_pool = {ws.address for ws in pool}
    load = {ws.address: ws.nbytes for ws in pool}
    copies: Plan = {}
    drops: Plan = {}
    target = len(pool) if n is None else min(n, len(pool))
    for key in dict.fromkeys(keys):
        ts = s.tasks.get(key)
        if ts is None or ts.state != "memory":
            continue
        size = max(ts.nbytes, 0)
        holders = _holders(s, ts, pending) & in_pool
        if len(holders) < target:
            wanted = target - len(holders)
            if branching_factor is not None:
                sources = sum(1 for ws in ts.who_has if ws.status == "running")
                under_way = len(pending.get(key, ()))
                wanted = min(wanted, max(sources * branching_factor - under_way, 0))
            lacking = sorted((a for a in in_pool if a not in holders), key=lambda a: (load[a], a))
            for address in lacking[:wanted]:
                copies.setdefault(address, []).append(key)
                load[address] += size
        elif n is not None and len(holders) > target:
            held = [ws.address for ws in ts.who_has if ws.address in in_pool]
            surplus = sorted(held, key=lambda a: (-load[a], a))[: len(holders) - target]
            for address in surplus:
                drops.setdefault(address, []).append(key)
                load[address] -= size
    return copies, drops


def plan_rebalance(
    s: SchedulerState, keys: Iterable[Key] | None = None, workers: Iterable[str] | None = None
) -> list[tuple[Key, str, str]]:
    """Moves ``(key, sender, recipient)`` that even out the data held by ``workers``.

    Greedy: the workers above the mean give away their largest movable keys (among
    ``keys``, all by default), each to the worker holding the least that lacks it, while
    the move narrows the gap between the two (the key is smaller than their difference)
    and the sender stays above the mean.
    """
    pool = running_workers(s, workers)
    if len(pool) < 2:
        return []
    wanted = None if keys is None else set(keys)
    load = {ws: ws.nbytes for ws in pool}
    mean = sum(load.values()) / len(pool)
    moves: list[tuple[Key, str, str]] = []
    for sender in sorted(pool, key=lambda ws: (-load[ws], ws.address)):
        if load[sender] <= mean:
            break
        movable = sorted(
            (
                ts
                for ts in sender.has_what
                if ts.nbytes > 0 and (wanted is None or ts.key in wanted)
            ),
            key=lambda ts: (-ts.nbytes, str(ts.key)),
        )
        for ts in movable:
            if load[sender] <= mean:
                break
            others = [ws for ws in pool if ws is not sender and ws not in ts.who_has]
            if not others:
                continue
            recipient = min(others, key=lambda ws: (load[ws], ws.address))
            if load[recipient] + ts.nbytes >= load[sender]:
                continue  # the move would not narrow the gap
            moves.append((ts.key, sender.address, recipient.address))
            load[sender] -= ts.nbytes
            load[recipient] += ts.nbytes
    return moves


def plan_retire(
    s: SchedulerState, addresses: Iterable[str], pending: Pending | None = None
) -> tuple[Plan, Plan]:
    """Copies that leave every key held by the workers at ``addresses`` on some running
    worker, and (second) the keys that cannot move because no running worker is left,
    by the retiring worker holding them."""
    pending = pending or {}
    retiring = [s.workers[a] for a in sorted(set(addresses)) if a in s.workers]
    pool = running_workers(s)
    load = {ws.address: ws.nbytes for ws in pool}
    copies: Plan = {}
    stuck: Plan = {}
    planned: set[Key] = set()
    for ws in retiring:
        for ts in sorted(ws.has_what, key=lambda t: str(t.key)):
            if ts.key in planned or _holders(s, ts, pending):
                continue
            if not pool:
                stuck.setdefault(ws.address, []).append(ts.key)
                continue
            recipient = min(load, key=lambda a: (load[a], a))
            copies.setdefault(recipient, []).append(ts.key)
            load[recipient] += max(ts.nbytes, 0)
            planned.add(ts.key)
    return copies, stuck


def workers_to_close(
    s: SchedulerState,
    n: int | None = None,
    target: int | None = None,
    memory_ratio: float | None = None,
    minimum: int = 0,
    key: Callable[[WorkerInfo], object] | None = None,
) -> list[WorkerInfo]:
    """Workers that can be retired cheaply: idle ones (nothing processing), those
    holding the least data first.

    Workers are taken in groups (``key(worker)``, say the host: a group closes whole, or
    not at all; default: each worker alone). With ``n``, up to ``n`` workers are chosen;
    with ``target``, enough to leave ``target`` workers; with neither, as many as leave
    the remaining workers room for ``memory_ratio`` (default 2) times all the data the
    cluster holds (with a worker without a memory limit, room is unknown: all idle
    workers but one that holds data). At least ``minimum`` workers are always left, and a
    worker with unfinished tasks is never chosen.
    """
    pool = running_workers(s)
    groups: dict[object, list[WorkerInfo]] = {}
    for ws in pool:
        groups.setdefault(key(ws) if key is not None else ws.address, []).append(ws)
    idle = [g for g in groups.values() if all(not ws.processing for ws in g)]
    idle.sort(key=lambda g: (sum(ws.nbytes for ws in g), min(ws.address for ws in g)))
    remaining = len(pool)
    keep = max(minimum, 0, target if target is not None else 0)
    held = sum(ws.nbytes for ws in pool)
    room = sum(ws.memory_limit for ws in pool) if all(ws.memory_limit for ws in pool) else None
    ratio = 2.0 if memory_ratio is None else memory_ratio
    if n is None and target is None and held > 0:
        keep = max(keep, 1)  # never all: the data must stay somewhere
    chosen: list[WorkerInfo] = []
    for group in idle:
        if n is not None and len(chosen) + len(group) > n:
            break
        if remaining - len(group) < keep:
            break
        if n is None and target is None and room is not None:
            if room - sum(ws.memory_limit for ws in group) < ratio * held:
                break
            room -= sum(ws.memory_limit for ws in group)
        chosen.extend(group)
        remaining -= len(group)
    return chosen
