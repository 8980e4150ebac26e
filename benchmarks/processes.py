"""Processes the benchmark starts, and how it stops them.

Every process is ended by its id (or its own process group), never by name. ``CliCluster``
runs a scheduler and one worker from a system's command line, as an operator would;
``ProcessTracker`` remembers every descendant of a process so that whatever outlives it can
be stopped afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import psutil

#: The command-line entry point of each system (run with this interpreter: ``python -m ...``).
CLI_MODULES = {"conveyor": "conveyor", "distributed": "dask"}


class BenchError(Exception):
    """A benchmark could not run or produced a wrong result; the message is its table cell."""


def expect(condition: bool, what: str) -> None:
    """Raise :class:`BenchError` unless ``condition`` (an ``assert`` that ``-O`` keeps)."""
    if not condition:
        raise BenchError(what)


def log_tail(path: Path, lines: int = 1, sep: str = " | ") -> str:
    """The last non-empty ``lines`` of a log file, or ``""``."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return sep.join(kept[-lines:])


def stop_processes(procs: Iterable[psutil.Process], grace: float = 5.0) -> None:
    """SIGTERM each process still running, wait up to ``grace`` seconds, then SIGKILL."""
    alive = [p for p in procs if p.is_running()]
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, left = psutil.wait_procs(alive, timeout=grace)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=grace)


class ProcessTracker:
    """Remembers every descendant ever seen of process ``pid`` (call :meth:`scan` often)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.seen: dict[int, psutil.Process] = {}

    def scan(self) -> None:
        """Record the current descendants of the root process."""
        with contextlib.suppress(psutil.Error):
            for child in self.root.children(recursive=True):
                self.seen.setdefault(child.pid, child)

    def stop_leftovers(self, grace: float = 5.0) -> int:
        """Stop every recorded descendant still running; return how many there were."""
        alive = [p for p in self.seen.values() if p.is_running()]
        stop_processes(alive, grace)
        return len(alive)


def _stop_group(popen: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group led by ``popen``, then SIGKILL it after ``grace`` seconds."""
    if popen.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(grace)
            return


class CliCluster:
    """A scheduler and one worker started from ``system``'s command line, bound to 127.0.0.1.

    Use as a context manager; on exit both process groups are stopped. ``directory`` must be
    an existing, empty directory that the caller removes.
    """

    def __init__(self, system: str, directory: Path, nthreads: int, timeout: float = 60.0) -> None:
        self.system = system
        self.directory = directory
        self.nthreads = nthreads
        self.timeout = timeout
        self.scheduler_file = directory / "scheduler.json"
        #: the scheduler process (set on entering the context)
        self.scheduler: psutil.Process
        self._popens: list[subprocess.Popen[bytes]] = []

    def _command(self, role: str) -> list[str]:
        cmd = [sys.executable, "-m", CLI_MODULES[self.system], role, "--host", "127.0.0.1"]
        cmd += ["--scheduler-file", str(self.scheduler_file)]
        if role == "scheduler":
            return [*cmd, "--port", "0", "--no-dashboard"]
        cmd += ["--nthreads", str(self.nthreads), "--local-directory", str(self.directory)]
        if self.system == "distributed":
            cmd += ["--no-dashboard", "--no-nanny"]
        return cmd

    def _spawn(self, role: str) -> subprocess.Popen[bytes]:
        with (self.directory / f"{role}.log").open("wb") as log:
            popen = subprocess.Popen(
                self._command(role),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        self._popens.append(popen)
        return popen

    def _wait_for_scheduler_file(self, popen: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                tail = log_tail(self.directory / "scheduler.log")
                raise BenchError(f"{self.system} scheduler exited ({popen.returncode}): {tail}")
            with contextlib.suppress(OSError, ValueError):
                if json.loads(self.scheduler_file.read_text()).get("address"):
                    return
            time.sleep(0.05)
        raise BenchError(f"no scheduler file after {self.timeout:.0f} s")

    def __enter__(self) -> CliCluster:
        try:
            scheduler = self._spawn("scheduler")
            self._wait_for_scheduler_file(scheduler)
            self.scheduler = psutil.Process(scheduler.pid)
            self._spawn("worker")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker, then the scheduler."""
        for popen in reversed(self._popens):
            _stop_group(popen, grace=5.0)
        self._popens.clear()
