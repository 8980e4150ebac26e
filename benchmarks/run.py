#!/usr/bin/env python3
"""Benchmark conveyor against dask.distributed: the same workloads, one table of ratios.

Run from the repository root (needs ``pip install -e '.[bench]'``)::

    python benchmarks/run.py [--systems conveyor,distributed]
        [--workloads map,latency,array,transfer,rawsock,submit,scale] [--quick] [--json out.json]

Each system runs in its own fresh child process of this script, one after the other (never
sharing a process or an event loop), on the same cluster shape: LocalCluster(n_workers=2,
threads_per_worker=1, processes=True, dashboard_address=None), every server on 127.0.0.1.
The table shows each figure per system, its unit, and the ratio conveyor vs distributed,
oriented so that > 1 means conveyor is better ("2.10x faster", "3.00x less memory").

Workloads (default: all but ``scale``; see benchmarks/README.md for what each measures):
``rawsock`` ``map`` ``latency`` ``array`` ``transfer`` ``submit``; ``scale`` (conveyor only,
1M tasks: long) and ``scale_all`` (``scale`` on every system, distributed included: longer).
``--quick`` shrinks the sizes so that a run takes a few minutes.

Every phase of a child has a time budget; a workload that fails, or whose child overruns its
budget, shows ``FAILED: reason`` in its cell and the rest still run (in a new child if the old
one had to be stopped). Benchmarks report ratios to read side by side; they are not tests.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from catalog import (
    ALL_WORKLOADS,
    CLUSTER_SHAPE,
    DEFAULT_WORKLOADS,
    SCALE_ALL,
    SYSTEMS,
    Sizes,
    budget,
    metrics,
)
from processes import ProcessTracker, log_tail
from report import SystemResult, build_rows, failure_notes, format_table, format_value

HERE = Path(__file__).resolve().parent
_POLL = 0.25  # seconds between looks at a running child
_STOP_GRACE = 30.0  # seconds a child gets to clean up after SIGTERM


# ------------------------------------------------------------------------ command line


def _names(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown) or '(empty)'}; choose from {','.join(allowed)}"
            )
        return names

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="workloads: " + ", ".join(ALL_WORKLOADS),
    )
    parser.add_argument(
        "--systems",
        type=_names(SYSTEMS),
        default=list(SYSTEMS),
        help=f"comma-separated (default: {','.join(SYSTEMS)})",
    )
    parser.add_argument(
        "--workloads",
        type=_names(ALL_WORKLOADS),
        default=list(DEFAULT_WORKLOADS),
        help=f"comma-separated (default: {','.join(DEFAULT_WORKLOADS)})",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a few minutes")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="also write the results here")
    # internal: the per-system child process
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tmpdir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def plan(systems: list[str], workloads: list[str]) -> dict[str, list[str]]:
    """The workloads each system runs, in the canonical order (``scale_all`` means ``scale``)."""
    wanted = set(workloads)
    scale_everywhere = SCALE_ALL in wanted
    if scale_everywhere:
        wanted.add("scale")
    return {
        system: [
            w
            for w in ALL_WORKLOADS
            if w in wanted and w != SCALE_ALL
            if w != "scale" or system == "conveyor" or scale_everywhere
        ]
        for system in systems
    }


# ------------------------------------------------------------------------- the child


class Terminated(BaseException):
    """Raised in the child on SIGTERM so that clusters and servers are closed on the way out."""


def _terminate(signum: int, frame: object) -> NoReturn:
    raise Terminated(f"signal {signum}")


def child_main(args: argparse.Namespace) -> int:
    from workloads import Runner  # imports numpy and dask: only the children need them

    signal.signal(signal.SIGTERM, _terminate)
    with args.events.open("a", encoding="utf-8") as events:
        Runner(args.child, args.quick, events, args.tmpdir).run(args.workloads)
    return 0


# ------------------------------------------------------------------------ the parent


@dataclass
class Phase:
    """What a child is doing, as it last announced, and until when it may."""

    name: str
    covers: list[str]
    budget: float
    deadline: float

    @classmethod
    def start(cls, name: str, covers: list[str], seconds: float) -> Phase:
        return cls(name, covers, seconds, time.monotonic() + seconds)


class EventReader:
    """Reads the complete JSON lines a child appended to its events file since last time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def poll(self) -> Iterator[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            if line.strip():
                yield json.loads(line)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class SystemRun:
    """Runs one system's workloads in child processes, one after another if one must stop."""

    def __init__(self, system: str, workloads: list[str], quick: bool, tmp: Path) -> None:
        self.result = SystemResult(system, workloads)
        self.quick = quick
        self.tmp = tmp
        self.labels = {m.key: (m.label, m.unit) for m in metrics(Sizes.for_mode(quick))}

    def run(self) -> SystemResult:
        start = time.monotonic()
        res = self.result
        unfinished = "not run"
        try:
            for attempt in range(1, len(res.requested) + 2):
                remaining = [w for w in res.requested if w not in res.finished]
                if not remaining:
                    break
                self._run_child(remaining, self.tmp / f"{res.system}-{attempt}")
        except KeyboardInterrupt:
            unfinished = "interrupted"
            raise
        finally:
            for w in res.requested:
                if w not in res.finished:
                    res.fail(w, unfinished)
            res.seconds = time.monotonic() - start
        return res

    def _command(self, workloads: list[str], directory: Path) -> list[str]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", self.result.system]
        cmd += ["--workloads", ",".join(workloads), "--tmpdir", str(directory)]
        cmd += ["--events", str(directory / "events.jsonl")]
        return [*cmd, "--quick"] if self.quick else cmd

    def _run_child(self, workloads: list[str], directory: Path) -> None:
        directory.mkdir(parents=True)
        log_path = directory / "child.log"
        path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
        # every process the child starts imports bench_tasks, and keeps its files in directory
        env = {**os.environ, "PYTHONPATH": path, "TMPDIR": str(directory)}
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                self._command(workloads, directory),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the parent, which stops the child
            )
        tracker = ProcessTracker(popen.pid)
        reader = EventReader(directory / "events.jsonl")
        phase = Phase.start("startup", workloads, budget("startup", self.quick))
        stopped = ""
        try:
            while popen.poll() is None:
                tracker.scan()
                phase = self._apply(reader, phase)
                if time.monotonic() > phase.deadline:
                    stopped = f"timed out after {phase.budget:.0f} s"
                    _stop_child(popen, tracker)
                    break
                time.sleep(_POLL)
            overrun = phase
            phase = self._apply(reader, phase)
            if stopped:  # not the phases it went through while stopping
                phase = overrun
        except BaseException:
            _stop_child(popen, tracker)
            raise
        finally:
            tracker.stop_leftovers()
        unfinished = [w for w in phase.covers if w not in self.result.finished]
        if unfinished:
            reason = stopped or f"child exited ({popen.returncode}): {log_tail(log_path)}"
            if phase.name not in unfinished:
                reason += f" (in {phase.name})"
            for w in unfinished:
                self.result.fail(w, reason)
                _say(f"[{self.result.system}] {w}: FAILED: {reason}")
            if popen.returncode and not stopped:
                tail = log_tail(log_path, 15, sep="\n")
                _say(f"[{self.result.system}] last lines of the child's log:\n{tail}")

    def _apply(self, reader: EventReader, phase: Phase) -> Phase:
        """Take in the child's new events; return the phase it is in now."""
        res = self.result
        for ev in reader.poll():
            kind = ev["event"]
            if kind == "phase":
                phase = Phase.start(ev["name"], list(ev["covers"]), float(ev["budget"]))
                _say(f"[{res.system}] {phase.name} (budget {phase.budget:.0f} s)")
            elif kind == "value":
                res.values[ev["key"]] = float(ev["value"])
                label, unit = self.labels.get(ev["key"], (ev["key"], ""))
                figure = f"{format_value(float(ev['value']))} {unit}".rstrip()
                _say(f"[{res.system}]   {label}: {figure}")
            elif kind == "done":
                res.finished.add(ev["workload"])
            elif kind == "failed":
                for w in ev["workloads"]:
                    res.fail(w, ev["reason"])
                    _say(f"[{res.system}]   {w}: FAILED: {ev['reason']}")
        return phase


def _stop_child(popen: subprocess.Popen[bytes], tracker: ProcessTracker) -> None:
    """SIGTERM the child (it closes what it started), then SIGKILL it and what is left."""
    tracker.scan()
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(_STOP_GRACE)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
    tracker.stop_leftovers()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _header(systems: list[str], quick: bool) -> str:
    names = " vs ".join(f"{s} {_version(s)}" for s in systems)
    shape = ", ".join(f"{k}={v}" for k, v in CLUSTER_SHAPE.items())
    mode = "quick" if quick else "full"
    return (
        f"{names}; LocalCluster({shape}); {mode} sizes; "
        f"{os.cpu_count()} CPUs; Python {platform.python_version()}"
    )


def parent_main(args: argparse.Namespace) -> int:
    per_system = {s: ws for s, ws in plan(args.systems, args.workloads).items() if ws}
    if not per_system:
        print("nothing to run: scale runs on conveyor only (scale_all: everywhere)")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    results: list[SystemResult] = []
    try:
        for system, workloads in per_system.items():
            _say(f"[{system}] running {', '.join(workloads)}")
            run = SystemRun(system, workloads, args.quick, tmp)
            results.append(run.result)  # partial results still show if interrupted
            run.run()
    except KeyboardInterrupt:
        _say("interrupted: the table shows what finished")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = build_rows(metrics(Sizes.for_mode(args.quick)), results)
    shown = [res.system for res in results]
    print(_header(shown, args.quick))
    print(format_table(rows, shown))
    notes = failure_notes(results)
    if notes:
        print("\n" + "\n".join(notes))
    took = ", ".join(f"{res.system} {res.seconds:.0f} s" for res in results)
    print(f"\nEach system ran in its own processes, back to back: {took}.")
    if args.json:
        doc = {
            "header": _header(shown, args.quick),
            "quick": args.quick,
            "systems": {
                res.system: {
                    "workloads": res.requested,
                    "values": res.values,
                    "errors": res.errors,
                    "seconds": res.seconds,
                }
                for res in results
            },
            "rows": [row.as_json() for row in rows],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    with contextlib.suppress(BrokenPipeError):
        return parent_main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
