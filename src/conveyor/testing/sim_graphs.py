"""The task graphs the simulator runs: random DAGs of simulated run specs, and the
values they must evaluate to (each task is 1 plus the sum of its dependencies, modulo
:data:`MODULUS`)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from conveyor.core.types import Key

__all__ = ["MODULUS", "dependencies_of", "expected_values", "random_dag"]

MODULUS = 1_000_003


def dependencies_of(run_spec: tuple[Any, ...]) -> tuple[Key, ...]:
    """The dependency keys named in a simulated run spec."""
    op = run_spec[0]
    if op == "add":
        return tuple(run_spec[1:])
    if op in ("fail", "flaky"):
        return tuple(run_spec[2:])
    if op == "value":
        return ()
    raise ValueError(f"unknown simulated op {op!r}")


def expected_values(tasks: Mapping[Key, tuple[Any, ...]]) -> dict[Key, int]:
    """What each non-failing task of ``tasks`` evaluates to (failing ones are left out)."""
    out: dict[Key, int] = {}
    failed: set[Key] = set()
    for key in _topological(tasks):
        spec = tasks[key]
        deps = dependencies_of(spec)
        if spec[0] == "fail" or any(d in failed for d in deps):
            failed.add(key)
        elif spec[0] == "value":
            out[key] = spec[1]
        else:
            out[key] = (1 + sum(out[d] for d in deps)) % MODULUS
    return out


def _topological(tasks: Mapping[Key, tuple[Any, ...]]) -> list[Key]:
    order: list[Key] = []
    seen: set[Key] = set()
    for root in tasks:
        stack: list[tuple[Key, bool]] = [(root, False)]
        while stack:
            key, done = stack.pop()
            if done:
                order.append(key)
                continue
            if key in seen:
                continue
            seen.add(key)
            stack.append((key, True))
            for dep in dependencies_of(tasks[key]):
                if dep in tasks and dep not in seen:
                    stack.append((dep, False))
    return order


def random_dag(
    rng: random.Random,
    n: int = 300,
    *,
    max_deps: int = 4,
    prefixes: tuple[str, ...] = ("load", "inc", "add", "sum", "agg"),
    fail_fraction: float = 0.0,
) -> dict[Key, tuple[Any, ...]]:
    """A random task graph of ``n`` tasks with string and tuple keys, in topological order.

    About a fifth of the tasks are roots in one large group (so root-task queuing kicks
    in); the others draw their dependencies mostly from recent tasks.
    """
    tasks: dict[Key, tuple[Any, ...]] = {}
    keys: list[Key] = []
    for i in range(n):
        if i < 3 or rng.random() < 0.2:
            key: Key = ("load", i)
            spec: tuple[Any, ...] = ("value", rng.randrange(100))
        else:
            prefix = rng.choice(prefixes[1:])
            key = f"{prefix}-{i}" if rng.random() < 0.7 else (prefix, i)
            ndeps = rng.randint(1, min(max_deps, len(keys)))
            window = keys[-30:] if rng.random() < 0.8 else keys
            deps = tuple(rng.sample(window, min(ndeps, len(window))))
            if rng.random() < fail_fraction:
                spec = ("fail", f"boom in {key!r}", *deps)
            else:
                spec = ("add", *deps)
        tasks[key] = spec
        keys.append(key)
    return tasks
