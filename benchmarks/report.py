"""The results of a benchmark run: per-system figures, the comparison table and its JSON form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from catalog import DERIVED, Metric, derive

_CELL_WIDTH = 44  # failure reasons are cut to this in the table (given in full below it)


@dataclass
class SystemResult:
    """What one system's child processes reported."""

    system: str
    requested: list[str]
    values: dict[str, float] = field(default_factory=dict)
    #: workload -> why it failed
    errors: dict[str, str] = field(default_factory=dict)
    #: workloads that reported done or failed
    finished: set[str] = field(default_factory=set)
    seconds: float = 0.0

    def fail(self, workload: str, reason: str) -> None:
        self.errors.setdefault(workload, reason)
        self.finished.add(workload)


@dataclass
class Row:
    """One metric across the systems."""

    metric: Metric
    values: dict[str, float | None]
    cells: dict[str, str]
    ratio: float | None
    comparison: str

    def as_json(self) -> dict[str, Any]:
        m = self.metric
        return {
            "key": m.key,
            "workload": m.workload,
            "label": m.label,
            "unit": m.unit,
            "higher_is_better": m.higher_is_better,
            "values": self.values,
            "cells": self.cells,
            "ratio_conveyor_vs_distributed": self.ratio,
            "comparison": self.comparison,
        }


def format_value(value: float) -> str:
    """A figure with as many digits as it deserves."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _short(reason: str) -> str:
    text = f"FAILED: {reason}"
    return text if len(text) <= _CELL_WIDTH else text[: _CELL_WIDTH - 3] + "..."


def _owner(key: str, by_key: dict[str, Metric]) -> str:
    return by_key[key].workload if key in by_key else key


def _missing_cell(m: Metric, res: SystemResult, by_key: dict[str, Metric]) -> str:
    """Why system ``res`` has no figure for ``m``."""
    needed = [m.workload]
    if m.key in DERIVED:
        needed += [_owner(k, by_key) for k in DERIVED[m.key][:2]]
    for workload in needed:
        if workload in res.errors:
            own = workload == m.workload
            return _short(res.errors[workload] if own else f"{workload} failed")
    for workload in needed:
        if workload not in res.requested:
            return "skipped" if workload == m.workload else f"n/a: needs {workload}"
    return "n/a" if m.key in DERIVED else "FAILED: no figure reported"


def _compare(
    m: Metric, conveyor: float | None, distributed: float | None
) -> tuple[float | None, str]:
    """The ratio conveyor vs distributed (> 1: conveyor is better) and its wording."""
    if m.kind == "reference":
        return None, "reference"
    if m.kind == "target":
        if conveyor is None or m.target is None:
            return None, "-"
        met = "met" if conveyor <= m.target else "MISSED"
        return None, f"target <= {m.target}: {met}"
    if conveyor is None or distributed is None:
        return None, "-"
    if conveyor <= 0 or distributed <= 0:
        return None, "n/a (a figure <= 0)"
    ratio = conveyor / distributed if m.higher_is_better else distributed / conveyor
    return ratio, f"{ratio:.2f}x {'less memory' if m.kind == 'memory' else 'faster'}"


def build_rows(metrics: list[Metric], results: list[SystemResult]) -> list[Row]:
    """One row per metric that some system was asked to measure."""
    by_key = {m.key: m for m in metrics}
    derived = {res.system: derive(res.values) for res in results}
    rows = []
    for m in metrics:
        if not any(m.workload in res.requested for res in results):
            continue
        values: dict[str, float | None] = {}
        cells: dict[str, str] = {}
        for res in results:
            value = derived[res.system].get(m.key)
            values[res.system] = value
            cells[res.system] = (
                format_value(value) if value is not None else _missing_cell(m, res, by_key)
            )
        ratio, comparison = _compare(m, values.get("conveyor"), values.get("distributed"))
        rows.append(Row(m, values, cells, ratio, comparison))
    return rows


def format_table(rows: list[Row], systems: list[str]) -> str:
    """The rows as an aligned plain-text table."""
    header = ["workload", *systems, "unit", "conveyor vs distributed"]
    lines = [
        [r.metric.label, *(r.cells[s] for s in systems), r.metric.unit, r.comparison] for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    numeric = range(1, 1 + len(systems))

    def fmt(line: list[str]) -> str:
        cells = [
            cell.rjust(w)
            if i in numeric and not cell.startswith(("FAILED", "n/a", "skip"))
            else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in lines)])


def failure_notes(results: list[SystemResult]) -> list[str]:
    """One line per failed workload, with its full reason."""
    return [
        f"{res.system} {workload}: FAILED: {reason}"
        for res in results
        for workload, reason in res.errors.items()
    ]
