"""Run a selection of dask's own test suite with every computation on a cluster.

    python tests/dask_suite/run.py                        # full selection on conveyor
    python tests/dask_suite/run.py --ci                   # the CI subset
    python tests/dask_suite/run.py --scheduler distributed  # the same on dask.distributed
    python tests/dask_suite/run.py --modules bag/tests/test_bag.py  # chosen modules
    python tests/dask_suite/run.py -- -x -k groupby       # extra pytest arguments

Prints pytest's report, then the pass/fail/skip counts; exits with pytest's status (so
"no tests ran" fails too).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


class _Counts:
    """A pytest plugin counting the outcome of every test."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
            if report.when == "call" or report.skipped:
                self.outcomes[outcome] += 1
        elif report.when == "call":
            self.outcomes[report.outcome] += 1
        elif report.failed:
            self.outcomes["error"] += 1
        elif report.skipped:
            self.outcomes["skipped"] += 1

    def pytest_deselected(self, items: list[Any]) -> None:
        self.outcomes["deselected"] += len(items)


def main(argv: list[str] | None = None) -> int:
    """Run the selection; return pytest's exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scheduler", choices=("conveyor", "distributed"), default="conveyor")
    parser.add_argument("--ci", action="store_true", help="run the CI subset only")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--modules",
        nargs="+",
        metavar="PATH",
        help="run these dask test modules or tests (relative to the dask package, e.g. "
        "array/tests/test_slicing.py or ...py::test_name) instead of the selection",
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE))
    import dask
    import dask_suite_selection as selection

    package = Path(dask.__file__).resolve().parent
    modules = args.modules or (selection.CI if args.ci else selection.FULL)
    counts = _Counts()
    os.chdir(package.parent)  # test ids read dask/array/tests/...
    status = pytest.main(
        [
            "-c",
            str(HERE / "pytest.ini"),
            "--rootdir",
            str(package.parent),
            "-p",
            "dask_suite_plugin",
            "-q",
            f"--dask-suite-scheduler={args.scheduler}",
            f"--dask-suite-workers={args.workers}",
            *[str(package / m) for m in modules],
            *args.pytest_args,
        ],
        plugins=[counts],
    )
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.outcomes.items()))
    which = "chosen modules" if args.modules else "CI subset" if args.ci else "full selection"
    print(f"dask suite on {args.scheduler} ({which}): {summary}")
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
