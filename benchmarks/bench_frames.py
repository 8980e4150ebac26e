"""The partition functions of the DataFrame workloads, run on workers (and by pandas alone
to make the expected results).

A module of its own, apart from ``bench_tasks``, so that only the DataFrame workloads make
a worker import pandas. Every partition is made from its index alone (seeded), so a worker
builds it without the client sending data, and pandas can rebuild the whole frame to check
a result. ``tag`` is never used: a new tag gives the collection new names, so nothing dask
caches by name (the divisions of ``set_index`` among others) carries over from one round
to the next.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: distinct values of the group-by column ``k``
N_KEYS = 1000


def make_events(i: int, rows: int, tag: int = 0) -> pd.DataFrame:
    """Partition ``i``: ``rows`` rows of a key ``k`` (int), a float ``x`` and an int ``y``."""
    rng = np.random.default_rng(i)
    return pd.DataFrame(
        {
            "k": rng.integers(0, N_KEYS, rows),
            "x": rng.random(rows),
            "y": rng.integers(0, 100, rows),
        }
    )


def make_side(i: int, rows: int, nparts: int, salt: int, tag: int = 0) -> pd.DataFrame:
    """Partition ``i`` of one side of a join: ``rows`` ids and an int column ``v<salt>``.

    Over ``nparts`` partitions, each id of ``range(rows * nparts)`` appears exactly once,
    in an order that ``salt`` scrambles (7919 is prime, so the stride visits every id).
    """
    n = rows * nparts
    ids = (np.arange(i * rows, (i + 1) * rows) * 7919 + salt * 104729) % n
    rng = np.random.default_rng(1000 * salt + i)
    return pd.DataFrame({"id": ids, f"v{salt}": rng.integers(0, 1000, rows)})


def index_summary(part: pd.DataFrame) -> pd.DataFrame:
    """One row about a partition of a frame sorted by its index: its size, the sum of
    ``y``, its smallest and largest index and whether the index is sorted."""
    index = part.index
    empty = len(part) == 0
    return pd.DataFrame(
        {
            "n": [len(part)],
            "ysum": [int(part["y"].sum())],
            "lo": [np.nan if empty else float(index.min())],
            "hi": [np.nan if empty else float(index.max())],
            "monotonic": [bool(index.is_monotonic_increasing)],
        }
    )
