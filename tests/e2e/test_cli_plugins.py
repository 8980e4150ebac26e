"""``conveyor scheduler --plugin`` and ``conveyor worker --plugin``, run as real processes
with a plugin module on ``PYTHONPATH``; the plugins note what they saw in files."""

from __future__ import annotations

import json
import operator
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Client

pytestmark = pytest.mark.e2e

PLUGINS = """
import json
import os

from conveyor import NannyPlugin, SchedulerPlugin, WorkerPlugin

OUT = os.environ["PLUGIN_OUT"]


def note(file, **data):
    with open(os.path.join(OUT, file), "a") as f:
        f.write(json.dumps({"pid": os.getpid(), **data}) + "\\n")


class Sched(SchedulerPlugin):
    def start(self, scheduler):
        note("scheduler", event="start", address=scheduler.address)

    def add_worker(self, scheduler, worker):
        note("scheduler", event="add_worker", worker=worker)


class Moves(WorkerPlugin):
    def setup(self, worker):
        note("worker", event="setup", address=worker.address)

    def transition(self, key, start, finish, **kwargs):
        note("worker", event="transition", key=key, start=start, finish=finish)


class Guard(NannyPlugin):
    def setup(self, nanny):
        note("nanny", event="setup", address=nanny.address)


def make_guard():
    return Guard()


instance = Moves()
not_a_plugin = 42


def make_nothing():
    return None
"""


class Proc:
    """A ``conveyor`` subprocess in a process group of its own, its stderr in a file."""

    def __init__(self, tmp: Path, name: str, args: list[str], env: dict[str, str]) -> None:
        self.log = tmp / f"{name}.stderr"
        with open(self.log, "w") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "conveyor", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                process_group=0,
            )

    def stderr(self) -> str:
        return self.log.read_text()

    def finish(self, timeout: float = 30) -> int:
        return self.popen.wait(timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    """The environment of the processes: the plugin module importable, PLUGIN_OUT set."""
    (tmp_path / "cli_plugins_mod.py").write_text(textwrap.dedent(PLUGINS))
    out = tmp_path / "out"
    out.mkdir()
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PLUGIN_OUT": str(out)}


@pytest.fixture
def start(tmp_path: Path, plugin_env: dict[str, str]) -> Iterator[Callable[..., Proc]]:
    """Start ``conveyor ARGS``; every process started is killed (by group) afterwards."""
    started: list[Proc] = []

    def run(*args: str) -> Proc:
        p = Proc(tmp_path, f"proc{len(started)}", list(args), plugin_env)
        started.append(p)
        return p

    yield run
    for p in started:
        p.kill()


def notes(tmp_path: Path, file: str) -> list[dict[str, Any]]:
    path = tmp_path / "out" / file
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def wait_for(what: str, found: Callable[[], Any], procs: list[Proc], timeout: float = 60) -> Any:
    """Poll for something no event announces (the notes of another process)."""
    deadline = time.monotonic() + timeout
    while not (result := found()):
        for p in procs:
            assert p.popen.poll() is None, f"exited while waiting for {what}:\n{p.stderr()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.05)
    return result


def start_scheduler(start: Callable[..., Proc], tmp_path: Path, *plugins: str) -> Proc:
    args = ["--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
    args += ["--scheduler-file", str(tmp_path / "scheduler.json")]
    return start("scheduler", *args, *(f"--plugin={p}" for p in plugins))


def test_scheduler_plugin_from_the_command_line(start: Callable[..., Proc], tmp_path: Path) -> None:
    s = start_scheduler(start, tmp_path, "cli_plugins_mod:Sched")
    started = wait_for("the plugin's start", lambda: notes(tmp_path, "scheduler"), [s])
    assert started[0]["event"] == "start" and started[0]["pid"] == s.popen.pid
    address = started[0]["address"]
    w = start("worker", address, "--no-nanny", "--nthreads", "1", "--host", "127.0.0.1")

    def added() -> list[dict[str, Any]]:
        return [n for n in notes(tmp_path, "scheduler") if n["event"] == "add_worker"]

    (note,) = wait_for("add_worker", added, [s, w])
    assert note["worker"].startswith("tcp://127.0.0.1:")
    w.popen.send_signal(signal.SIGTERM)
    s.popen.send_signal(signal.SIGTERM)
    assert w.finish() == 0, w.stderr()
    assert s.finish() == 0, s.stderr()


def run_a_task(address: str) -> str:
    """Submit a task, wait for its result; the address of the worker that ran it."""
    with Client(address, set_as_default=False) as c:
        fut = c.submit(operator.add, 1, 2, key="add-1-2")
        assert fut.result(timeout=60) == 3
        ((worker, keys),) = c.has_what().items()
        assert "add-1-2" in keys
        return str(worker)


def moves_of(tmp_path: Path, key: str) -> list[tuple[str, str]]:
    return [
        (n["start"], n["finish"])
        for n in notes(tmp_path, "worker")
        if n["event"] == "transition" and n["key"] == key
    ]


@pytest.mark.parametrize("plugin", ["cli_plugins_mod:Moves", "cli_plugins_mod:instance"])
def test_worker_plugin_without_a_nanny(
    start: Callable[..., Proc], tmp_path: Path, plugin: str
) -> None:
    s = start_scheduler(start, tmp_path)
    sf = str(tmp_path / "scheduler.json")
    args = ["--scheduler-file", sf, "--no-nanny", "--nthreads", "1", "--host", "127.0.0.1"]
    w = start("worker", *args, "--plugin", plugin)
    (setup,) = wait_for("the plugin's setup", lambda: notes(tmp_path, "worker"), [s, w])
    assert setup["event"] == "setup" and setup["pid"] == w.popen.pid
    address = json.loads(Path(sf).read_text())["address"]
    assert run_a_task(address) == setup["address"]
    moves = moves_of(tmp_path, "add-1-2")  # noted before the worker reported the result
    assert moves[:3] == [("released", "ready"), ("ready", "executing"), ("executing", "memory")]


def test_worker_and_nanny_plugins_under_a_nanny(start: Callable[..., Proc], tmp_path: Path) -> None:
    s = start_scheduler(start, tmp_path)
    sf = str(tmp_path / "scheduler.json")
    w = start(
        "worker",
        "--scheduler-file",
        sf,
        "--nthreads",
        "1",
        "--host",
        "127.0.0.1",
        "--plugin",
        "cli_plugins_mod:Moves",
        "--plugin",
        "cli_plugins_mod:make_guard",
    )
    (guard,) = wait_for("the nanny plugin's setup", lambda: notes(tmp_path, "nanny"), [s, w])
    assert guard["pid"] == w.popen.pid  # in the nanny: the process the command started
    (setup,) = wait_for("the worker plugin's setup", lambda: notes(tmp_path, "worker"), [s, w])
    assert setup["pid"] != w.popen.pid  # in the worker process the nanny started
    address = json.loads(Path(sf).read_text())["address"]
    assert run_a_task(address) == setup["address"]
    moves = moves_of(tmp_path, "add-1-2")  # noted before the worker reported the result
    assert moves[:3] == [("released", "ready"), ("ready", "executing"), ("executing", "memory")]
    w.popen.send_signal(signal.SIGTERM)
    assert w.finish() == 0, w.stderr()


UNREACHABLE = "tcp://127.0.0.1:9"  # a worker that got this far would fail otherwise


@pytest.mark.parametrize(
    ("command", "plugin", "message"),
    [
        ("scheduler", "cli_plugins_mod", "is not MODULE:NAME"),
        ("scheduler", "no_such_module_here:Sched", "no module named 'no_such_module_here'"),
        ("scheduler", "cli_plugins_mod:Nope", "module 'cli_plugins_mod' has no attribute 'Nope'"),
        ("scheduler", "cli_plugins_mod:Moves", "Moves, not a SchedulerPlugin subclass"),
        ("scheduler", "cli_plugins_mod:not_a_plugin", "is 42, not a SchedulerPlugin"),
        ("scheduler", "cli_plugins_mod:make_nothing", "made None, not a SchedulerPlugin"),
        ("worker", "cli_plugins_mod:Sched", "not a WorkerPlugin or NannyPlugin subclass"),
        ("worker", "cli_plugins_mod:", "is not MODULE:NAME"),
        ("worker --no-nanny", "cli_plugins_mod:Guard", "--no-nanny workers have no nanny"),
    ],
)
def test_a_bad_plugin_is_a_usage_error(
    start: Callable[..., Proc], tmp_path: Path, command: str, plugin: str, message: str
) -> None:
    name, *flags = command.split()
    if name == "scheduler":
        sf = tmp_path / "scheduler.json"
        args = ["--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(sf)]
    else:
        args = [UNREACHABLE, "--host", "127.0.0.1"]
    p = start(name, *args, *flags, "--plugin", plugin)
    assert p.finish() == 2, p.stderr()
    err = p.stderr()
    assert "Error: Invalid value for '--plugin'" in err and message in err, err
    assert "Traceback" not in err and "started at" not in err
    assert not (tmp_path / "scheduler.json").exists()  # nothing listened
    assert notes(tmp_path, "scheduler") == [] and notes(tmp_path, "worker") == []
