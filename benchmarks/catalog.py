"""What the benchmark measures: workload names, sizes, time budgets and the metrics reported.

Shared by the parent process (which draws the table) and the per-system child processes
(which measure); it imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: DataFrame workloads: each starts its own LocalCluster (its first computation is "cold").
FRAME_WORKLOADS = ("df_shuffle", "df_merge", "df_set_index")
#: Workloads run when ``--workloads`` is not given, in the order they run.
DEFAULT_WORKLOADS = ("rawsock", "map", "latency", "array", "transfer", *FRAME_WORKLOADS, "submit")
#: Workloads that share one LocalCluster per system.
CLUSTER_WORKLOADS = ("map", "latency", "array", "transfer")
#: ``scale`` runs on conveyor only; ``scale_all`` also runs it on every other system (slow).
SCALE_ALL = "scale_all"
ALL_WORKLOADS = (*DEFAULT_WORKLOADS, "scale", SCALE_ALL)
SYSTEMS = ("conveyor", "distributed")

#: The cluster every system gets: two worker processes with one thread each.
CLUSTER_SHAPE = {
    "n_workers": 2,
    "threads_per_worker": 1,
    "processes": True,
    "dashboard_address": None,
}
#: Per-task scheduler cost may grow this much from the small to the large ``scale`` run.
SCALE_GROWTH_TARGET = 1.5
#: A DataFrame workload's time on a warm (cold) cluster may be this many times dask's
#: synchronous scheduler's in one process.
FRAME_WARM_TARGET = 1.5
FRAME_COLD_TARGET = 2.0

#: ``target``: a ratio each system has on its own, held against a target.
Kind = Literal["speed", "memory", "reference", "target"]


@dataclass(frozen=True)
class Sizes:
    """Problem sizes; ``--quick`` shrinks them."""

    n_map: int
    array_n: int
    n_wait: int
    scale_ns: tuple[int, int]
    df_rounds: int
    transfer_bytes: int = 200_000_000
    #: DataFrame workloads: partitions and rows per partition (1M rows: dask's synchronous
    #: scheduler takes about half a second for each workload on the reference machine)
    df_parts: int = 20
    df_rows: int = 50_000
    latency_round_trips: int = 200
    latency_repeats: int = 3

    @classmethod
    def for_mode(cls, quick: bool) -> Sizes:
        if quick:
            return cls(
                n_map=2_000, array_n=4_000, n_wait=20_000, scale_ns=(10_000, 100_000), df_rounds=3
            )
        return cls(
            n_map=10_000, array_n=10_000, n_wait=100_000, scale_ns=(10_000, 1_000_000), df_rounds=5
        )


#: Seconds each phase of a child may take before the parent stops it: (full, quick).
_BUDGETS: dict[str, tuple[float, float]] = {
    "startup": (120, 120),
    "setup": (180, 120),
    "teardown": (90, 90),
    "rawsock": (120, 120),
    "map": (300, 120),
    "latency": (180, 120),
    "array": (900, 300),
    "transfer": (300, 300),
    "df_shuffle": (300, 180),
    "df_merge": (300, 180),
    "df_set_index": (300, 180),
    "submit": (600, 300),
    "scale": (5400, 900),
}


def budget(phase: str, quick: bool) -> float:
    """The time limit of ``phase`` in seconds."""
    full, short = _BUDGETS[phase]
    return short if quick else full


@dataclass(frozen=True)
class Metric:
    """One row of the table: what a workload reports, and which way is better."""

    key: str
    workload: str
    label: str
    unit: str
    higher_is_better: bool
    kind: Kind
    #: for ``target`` metrics: the largest value that meets the target
    target: float | None = None


def _count(n: int) -> str:
    """``10k``, ``1M``: a compact task count for labels."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return f"{n:,}"


HIGHER, LOWER = True, False  # which way a figure is better


def workload_of(key: str) -> str:
    """The workload a metric key belongs to: the longest workload name it starts with."""
    names = [w for w in ALL_WORKLOADS if key == w or key.startswith(f"{w}_")]
    return max(names, key=len) if names else key.split("_")[0]


def _frame_rows(sizes: Sizes) -> list[tuple[str, str, str, bool, Kind]]:
    rows = _count(sizes.df_parts * sizes.df_rows)
    what = {
        "df_shuffle": f"{rows} rows shuffle+groupby",
        "df_merge": f"2x{rows} rows merge+sum",
        "df_set_index": f"{rows} rows set_index+summary",
    }
    out: list[tuple[str, str, str, bool, Kind]] = []
    for name in FRAME_WORKLOADS:
        label = f"{name}: {what[name]}"
        out += [
            (name, f"{label}, warm", "s", LOWER, "speed"),
            (f"{name}_cold", f"{name}: cold (fresh cluster)", "s", LOWER, "speed"),
            (f"{name}_sync", f"{name}: dask sync scheduler", "s", LOWER, "reference"),
            (f"{name}_vs_sync", f"{name}: warm / sync", "x", LOWER, "target"),
            (f"{name}_cold_vs_sync", f"{name}: cold / sync", "x", LOWER, "target"),
        ]
    return out


def metrics(sizes: Sizes) -> list[Metric]:
    """Every row the table can show, in order."""
    mb = sizes.transfer_bytes // 1_000_000
    small, large = (_count(n) for n in sizes.scale_ns)
    a = sizes.array_n
    rows: list[tuple[str, str, str, bool, Kind]] = [
        ("rawsock", f"rawsock: {mb} MB, loopback socket", "MB/s", HIGHER, "reference"),
        ("map", f"map: {_count(sizes.n_map)} x inc", "tasks/s", HIGHER, "speed"),
        ("latency", f"latency: {sizes.latency_round_trips} round trips", "ms", LOWER, "speed"),
        ("latency_median", "latency: median of 3 repeats", "ms", LOWER, "speed"),
        ("array", f"array: ({a}x{a}, 100x100 chunks)+1 .sum()", "s", LOWER, "speed"),
        ("transfer", f"transfer: {mb} MB worker A -> B", "MB/s", HIGHER, "speed"),
        ("transfer_pct", "transfer: % of rawsock", "%", HIGHER, "speed"),
        *_frame_rows(sizes),
        ("submit", f"submit: {_count(sizes.n_wait)} waiting tasks", "tasks/s", HIGHER, "speed"),
        ("submit_rss", "submit: scheduler RSS/waiting task", "B/task", LOWER, "memory"),
        ("scale_time_small", f"scale: {small} tasks run+release", "us/task", LOWER, "speed"),
        ("scale_rss_small", f"scale: {small} scheduler RSS", "B/task", LOWER, "memory"),
        ("scale_time_large", f"scale: {large} tasks run+release", "us/task", LOWER, "speed"),
        ("scale_rss_large", f"scale: {large} scheduler RSS", "B/task", LOWER, "memory"),
        ("scale_time_growth", f"scale: time/task {large}/{small}", "x", LOWER, "target"),
        ("scale_rss_growth", f"scale: RSS/task {large}/{small}", "x", LOWER, "target"),
    ]
    return [
        Metric(key, workload_of(key), label, unit, higher, kind, TARGETS.get(key))
        for key, label, unit, higher, kind in rows
    ]


#: The target of each ``target`` metric.
TARGETS: dict[str, float] = {
    "scale_time_growth": SCALE_GROWTH_TARGET,
    "scale_rss_growth": SCALE_GROWTH_TARGET,
    **{f"{name}_vs_sync": FRAME_WARM_TARGET for name in FRAME_WORKLOADS},
    **{f"{name}_cold_vs_sync": FRAME_COLD_TARGET for name in FRAME_WORKLOADS},
}


#: Metrics computed from others (in the parent): key -> (numerator, denominator, factor).
DERIVED: dict[str, tuple[str, str, float]] = {
    "transfer_pct": ("transfer", "rawsock", 100.0),
    "scale_time_growth": ("scale_time_large", "scale_time_small", 1.0),
    "scale_rss_growth": ("scale_rss_large", "scale_rss_small", 1.0),
    **{f"{name}_vs_sync": (name, f"{name}_sync", 1.0) for name in FRAME_WORKLOADS},
    **{f"{name}_cold_vs_sync": (f"{name}_cold", f"{name}_sync", 1.0) for name in FRAME_WORKLOADS},
}


def derive(values: dict[str, float]) -> dict[str, float]:
    """``values`` plus every derived metric whose inputs are present (and divisible)."""
    out = dict(values)
    for key, (num, den, factor) in DERIVED.items():
        if num in values and den in values and values[den] > 0:
            out[key] = factor * values[num] / values[den]
    return out
