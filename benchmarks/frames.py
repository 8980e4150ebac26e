"""The DataFrame workloads (``df_shuffle``, ``df_merge``, ``df_set_index``), run inside the
child process of one system.

Each workload starts a fresh LocalCluster of its own (the standard shape) and times:

* ``cold``: the first computation on it, before the workers have run anything;
* ``warm``: the median of the next rounds on the same cluster;
* ``sync``: the median of as many rounds on dask's single-threaded synchronous scheduler
  in this process, the hardware reference; a sync round follows each warm round, so both
  see the same load on the machine.

Every round builds its collection anew with a new ``tag`` (new names, so nothing dask
caches by name carries over, such as the divisions ``set_index`` computes) and is checked
against the result pandas gives on the whole frame. The scheduler and the shuffle method
(``tasks``) are set in ``dask.config`` around each computation, and the method is also
passed explicitly, so every system runs the same graph, and the computation ``set_index``
makes while building its graph (its divisions) runs on the same scheduler.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
from bench_frames import index_summary, make_events, make_side
from processes import expect

if TYPE_CHECKING:
    from workloads import Runner

SHUFFLE_METHOD = "tasks"


@dataclass(frozen=True)
class FrameCase:
    """One DataFrame workload: its collection, the result pandas gives, and the check."""

    #: (partitions, rows per partition, tag) -> the dask collection to compute
    build: Callable[[int, int, int], Any]
    #: (partitions, rows per partition) -> the expected result, computed by pandas
    expected: Callable[[int, int], Any]
    #: (result, expected) -> None, or BenchError
    check: Callable[[Any, Any], None]


def _events(parts: int, rows: int, tag: int) -> dd.DataFrame:
    meta = make_events(0, 1).iloc[:0]
    return dd.from_map(make_events, range(parts), rows=rows, tag=tag, meta=meta)


def _side(parts: int, rows: int, salt: int, tag: int) -> dd.DataFrame:
    meta = make_side(0, 1, 1, salt).iloc[:0]
    return dd.from_map(
        make_side, range(parts), rows=rows, nparts=parts, salt=salt, tag=tag, meta=meta
    )


def _all_events(parts: int, rows: int) -> pd.DataFrame:
    return pd.concat([make_events(i, rows) for i in range(parts)], ignore_index=True)


# ------------------------------------------------------------------ df_shuffle


def _shuffle(parts: int, rows: int, tag: int) -> Any:
    shuffled = _events(parts, rows, tag).shuffle("k", shuffle_method=SHUFFLE_METHOD)
    return shuffled.groupby("k").agg({"x": "sum", "y": "sum"})


def _shuffle_expected(parts: int, rows: int) -> pd.DataFrame:
    return _all_events(parts, rows).groupby("k").agg({"x": "sum", "y": "sum"})


def _shuffle_check(got: pd.DataFrame, want: pd.DataFrame) -> None:
    got = got.sort_index()
    expect(list(got.index) == list(want.index), f"df_shuffle: {len(got)} groups, not {len(want)}")
    expect(bool((got["y"] == want["y"]).all()), "df_shuffle: wrong sums of y")
    expect(bool(np.allclose(got["x"], want["x"], rtol=1e-9)), "df_shuffle: wrong sums of x")


# -------------------------------------------------------------------- df_merge


def _merge(parts: int, rows: int, tag: int) -> Any:
    left, right = _side(parts, rows, 1, tag), _side(parts, rows, 2, tag)
    joined = left.merge(right, on="id", shuffle_method=SHUFFLE_METHOD, broadcast=False)
    return (joined["v1"] * joined["v2"]).sum()


def _merge_expected(parts: int, rows: int) -> int:
    sides = [pd.concat([make_side(i, rows, parts, salt) for i in range(parts)]) for salt in (1, 2)]
    joined = sides[0].merge(sides[1], on="id")
    expect(len(joined) == parts * rows, "df_merge: pandas joined a wrong number of rows")
    return int((joined["v1"] * joined["v2"]).sum())


def _merge_check(got: Any, want: int) -> None:
    expect(int(got) == want, f"df_merge: sum is {got}, expected {want}")


# ---------------------------------------------------------------- df_set_index


def _set_index(parts: int, rows: int, tag: int) -> Any:
    indexed = _events(parts, rows, tag).set_index("x", shuffle_method=SHUFFLE_METHOD)
    meta = index_summary(make_events(0, 1).set_index("x")).iloc[:0]
    return indexed.map_partitions(index_summary, meta=meta)


def _set_index_expected(parts: int, rows: int) -> tuple[int, int]:
    return parts * rows, int(_all_events(parts, rows)["y"].sum())


def _set_index_check(got: pd.DataFrame, want: tuple[int, int]) -> None:
    n, ysum = want
    expect(int(got["n"].sum()) == n, f"df_set_index: {got['n'].sum()} rows, not {n}")
    expect(int(got["ysum"].sum()) == ysum, "df_set_index: wrong sum of y")
    expect(bool(got["monotonic"].all()), "df_set_index: a partition is not sorted")
    filled = got[got["n"] > 0]
    lo, hi = filled["lo"].to_numpy(), filled["hi"].to_numpy()
    expect(bool((hi[:-1] <= lo[1:]).all()), "df_set_index: partitions overlap or are out of order")


CASES: dict[str, FrameCase] = {
    "df_shuffle": FrameCase(_shuffle, _shuffle_expected, _shuffle_check),
    "df_merge": FrameCase(_merge, _merge_expected, _merge_check),
    "df_set_index": FrameCase(_set_index, _set_index_expected, _set_index_check),
}


def _timed(case: FrameCase, parts: int, rows: int, tag: int, scheduler: Any) -> tuple[float, Any]:
    """Seconds to compute the workload's collection on ``scheduler``, and the result."""
    collection = case.build(parts, rows, tag)
    with dask.config.set({"scheduler": scheduler, "dataframe.shuffle.method": SHUFFLE_METHOD}):
        start = time.perf_counter()
        (got,) = dask.compute(collection)
        return time.perf_counter() - start, got


def measure(runner: Runner, name: str, limit: float) -> None:
    """Run the DataFrame workload ``name``: cold, warm and sync figures (see the module)."""
    case = CASES[name]
    sizes = runner.sizes
    parts, rows = sizes.df_parts, sizes.df_rows
    want = case.expected(parts, rows)
    tags = itertools.count()
    warm: list[float] = []
    sync: list[float] = []
    with contextlib.ExitStack() as stack:
        client = runner.start_local_cluster(stack)  # fresh: nothing has run on it yet
        cold, got = _timed(case, parts, rows, next(tags), client)
        case.check(got, want)
        for _ in range(sizes.df_rounds):
            seconds, got = _timed(case, parts, rows, next(tags), client)
            case.check(got, want)
            warm.append(seconds)
            seconds, got = _timed(case, parts, rows, next(tags), "sync")
            case.check(got, want)
            sync.append(seconds)
    runner.value(name, statistics.median(warm))
    runner.value(f"{name}_cold", cold)
    runner.value(f"{name}_sync", statistics.median(sync))
    for kind, figures in (("warm", warm), ("sync", sync)):  # the spread, for the JSON output
        runner.value(f"{name}_{kind}_min", min(figures))
        runner.value(f"{name}_{kind}_max", max(figures))
