"""The task functions the benchmark workloads run on workers.

They live in their own small module so that workers import them by reference, as they would
import a user's library: ``run.py`` puts this directory on ``PYTHONPATH`` for every process it
starts (the system under test, its worker processes and its command-line servers).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: Elements sampled by :func:`fingerprint` (a prime stride, so it is not aligned to anything).
_STRIDE = 4099


def inc(x: int) -> int:
    """``x + 1``: the unit of work for the throughput and latency workloads."""
    return x + 1


def ident(x: int, r: object = None) -> int:
    """``x``; ``r`` only makes the task depend on another one."""
    return x


def make_random(n: int, seed: int) -> npt.NDArray[np.float64]:
    """``n`` random float64 numbers: incompressible, so no transport can shortcut them."""
    return np.random.default_rng(seed).random(n)


def fingerprint(a: npt.NDArray[np.float64]) -> tuple[int, float]:
    """The array's size in bytes and the sum of a strided sample: cheap, and content-sensitive."""
    return int(a.nbytes), float(a[::_STRIDE].sum())
