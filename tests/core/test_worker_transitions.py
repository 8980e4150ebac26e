"""The worker's transition table: what it allows, what it refuses, and that the state
machine moves tasks only through it.

Random event streams here play a plausible shell (outcomes only for tasks it was told to
execute, transfer answers only for fetches it was told to start) against a WorkerState
built with ``validate=True``.
"""

from __future__ import annotations

import itertools
import random
import re

import pytest

from conveyor.core import worker
from conveyor.core import worker_events as we
from conveyor.core.types import Key
from conveyor.core.worker import TRANSITIONS, InvalidWorkerTransition, WorkerState

ME = "tcp://10.0.0.1:1000"
P1 = "tcp://10.0.0.2:1000"
P2 = "tcp://10.0.0.3:1000"
P3 = "tcp://10.0.0.4:1000"


def compute(
    key: Key, order: int, who_has: dict[Key, list[str]] | None = None
) -> we.ComputeTaskEvent:
    return we.ComputeTaskEvent(0.0, key, b"s", (0, 1, order), who_has or {})


# ------------------------------------------------------------------- refusal


def test_a_move_missing_from_the_table_raises_and_changes_nothing() -> None:
    ws = WorkerState(ME, 1, validate=True)
    ws.handle(compute("x", 0))
    ts = ws.tasks["x"]
    assert ts.state == "executing"
    log = list(ws.log)
    for finish in ("fetch", "waiting", "released", "forgotten", "nonsense"):
        with pytest.raises(InvalidWorkerTransition, match=rf"'x': executing -> {finish}"):
            ws._transition(ts, finish)
    assert ts.state == "executing" and ws.executing_keys == {"x"}
    assert list(ws.log) == log
    ws.validate()
    # the task goes on as if nothing had been asked
    assert ws.handle(we.ExecuteSuccess(1.0, "x", 8, "int", 0.0, 1.0)) == [
        we.TaskFinishedMsg("x", 8, "int", 0.0, 1.0)
    ]


def test_the_table_has_no_arrow_from_a_state_to_itself_or_out_of_forgotten() -> None:
    assert all(start != finish for start, finish in TRANSITIONS)
    assert not [pair for pair in TRANSITIONS if pair[0] == "forgotten"]


# ------------------------------------------------------- the documented arrows


def documented_arrows() -> set[tuple[str, str]]:
    """The arrows drawn in the literal blocks of ``conveyor.core.worker``'s docstring:
    ``a, b -> c | d -> e`` means a->c, a->d, b->c, b->d, c->e, d->e."""
    doc = worker.__doc__ or ""
    blocks = re.findall(r"::\n\n((?:    .*\n)+)", doc)
    assert blocks, "no arrows in the module docstring"
    pairs: set[tuple[str, str]] = set()
    for line in "".join(blocks).splitlines():
        for chain in re.sub(r"\(.*?\)", "", line).split(";"):
            groups = [re.split(r"[,|]", part) for part in chain.split("->")]
            steps = [[s.strip() for s in group if s.strip()] for group in groups]
            for here, there in itertools.pairwise(steps):
                pairs.update((a, b) for a in here for b in there)
    return pairs


def test_the_module_docstring_draws_exactly_the_table() -> None:
    drawn = documented_arrows()
    assert sorted(drawn - set(TRANSITIONS)) == []
    assert sorted(set(TRANSITIONS) - drawn) == []


# ------------------------------------------------------------ random streams


def random_stream(seed: int, steps: int = 250) -> WorkerState:
    """Drive a WorkerState with a seeded, shell-plausible stream of events."""
    rng = random.Random(seed)
    keys = [f"k{i}" for i in range(rng.choice([6, 10]))]
    holders = [P1, P2, P3, ME]
    ws = WorkerState(
        ME,
        rng.choice([1, 2]),
        validate=True,
        replayable=True,
        resources=rng.choice([None, {"GPU": 2.0}]),
        prefetch_per_thread=8,
        outgoing_connections=rng.choice([1, 1, 2]),
        transfer_message_bytes_limit=rng.choice([10, 50_000_000]),
    )
    running: list[Key] = []
    seceded: list[Key] = []
    fetches: list[we.GatherDep] = []
    for step in range(steps):
        now = float(step)
        roll = rng.random()
        event: we.WorkerEvent
        if roll < 0.3:
            i = rng.randrange(len(keys))
            deps = rng.sample(keys[:i], min(i, rng.choice([0, 1, 2])))
            event = we.ComputeTaskEvent(
                now,
                keys[i],
                b"s",
                (0, rng.randint(0, 2), i),
                {d: rng.sample(holders, rng.choice([0, 1, 1, 2])) for d in deps},
                {d: rng.choice([1, 100]) for d in deps},
                rng.choice([0.0001, 0.5]),
                step,
                False,
                rng.choice([None, None, {"GPU": 1.0}, {"GPU": 3.0}]),
            )
        elif roll < 0.38:
            event = we.FreeKeysEvent(now, rng.sample(keys, rng.randint(1, 3)))
        elif roll < 0.42:
            picked = rng.sample(keys, 2)
            event = we.RefreshWhoHasEvent(
                now, {k: rng.sample(holders, rng.randint(0, 2)) for k in picked}
            )
        elif roll < 0.6 and running:
            key = running.pop(rng.randrange(len(running)))
            if key in seceded:
                seceded.remove(key)
            if rng.random() < 0.8:
                event = we.ExecuteSuccess(now, key, 8, "int", now, now)
            else:
                event = we.ExecuteFailure(now, key, None, None, "E: x", "", now, now)
        elif roll < 0.78 and fetches:
            fetch = fetches.pop(rng.randrange(len(fetches)))
            failed = rng.random() < 0.15
            got = {} if failed else {k: 3 for k in fetch.keys if rng.random() < 0.7}
            lost = [k for k in fetch.keys if k not in got]
            event = we.GatherDepDone(now, fetch.worker, got, lost, failed)
        elif roll < 0.82:
            event = we.UpdateDataEvent(now, {k: 7 for k in rng.sample(keys, rng.randint(1, 2))})
        elif roll < 0.87:
            picked = rng.sample(keys, 2)
            event = we.AcquireReplicasEvent(
                now, {k: rng.sample(holders, rng.randint(0, 2)) for k in picked}
            )
        elif roll < 0.93 and running:
            key = rng.choice(running)
            seceded.append(key)
            event = we.SecedeEvent(now, key)
        elif seceded:
            event = we.RejoinEvent(now, seceded.pop(rng.randrange(len(seceded))))
        else:
            continue
        for instruction in ws.handle(event):
            if isinstance(instruction, we.Execute):
                running.append(instruction.key)
            elif isinstance(instruction, we.GatherDep):
                fetches.append(instruction)
    return ws


def test_random_streams_move_tasks_only_along_the_table() -> None:
    """Each key's story is one unbroken chain of table moves from ``released`` (a record
    made again after ``forgotten`` starts there too), ending in its present state:
    nothing changed a state without the driver."""
    for seed in range(20):
        ws = random_stream(seed)
        now_in: dict[Key, str] = {}
        for key, start, finish, _ in ws.log:
            assert (start, finish) in TRANSITIONS, (seed, key, start, finish)
            assert start == now_in.get(key, "released"), (seed, key, start)
            now_in[key] = "released" if finish == "forgotten" else finish
        for key, ts in ws.tasks.items():
            assert ts.state == now_in.get(key, "released"), (seed, key)
        assert all(now_in[k] == "released" for k in now_in if k not in ws.tasks), seed


def test_random_streams_exercise_every_entry_of_the_table() -> None:
    seen: set[tuple[str, str]] = set()
    for seed in range(300):
        seen.update((start, finish) for _, start, finish, _ in random_stream(seed).log)
        if len(seen) == len(TRANSITIONS):
            break
    assert sorted(set(TRANSITIONS) - seen) == []


# -------------------------------------------------------------- ordering


def test_a_fetch_task_computed_here_leaves_its_peers_queue_first() -> None:
    """``t`` waits in P1's fetch queue (one connection at most, P3 holds it); asked to
    compute ``t``, whose dependency ``z`` P1 also holds, the worker takes ``t`` out of the
    queue before ``z`` joins: P1's queue is made anew, behind P2's, which goes first."""
    ws = WorkerState(ME, 1, validate=True, outgoing_connections=1)
    assert ws.handle(compute("a", 0, {"d": [P3]})) == [we.GatherDep(P3, ["d"], 0)]
    assert ws.handle(compute("b", 1, {"t": [P1], "y": [P2]})) == []
    assert ws.handle(compute("t", 2, {"z": [P1]})) == []
    assert list(ws.data_needed) == [P2, P1]
    assert ws.handle(we.GatherDepDone(1.0, P3, {"d": 1})) == [
        we.AddKeysMsg({"d": 1}),
        we.GatherDep(P2, ["y"], 0),
        we.Execute("a"),
    ]
