"""The scheduler process never unpickles what a peer sends (issue 12).

A ``conveyor scheduler`` runs with a preload that watches every unpickling in its process
from the moment the scheduler is made: an audit hook counts ``pickle.find_class`` events
and wrappers count calls of ``pickle.loads``/``pickle.load`` (``cloudpickle.loads`` is the
same function). Both are needed: ``find_class`` fires whenever an unpickler resolves a
global (a function, a class, any object that is not a builtin container or scalar), so it
catches every pickle that could run code, whichever way it was opened; but a pickle of
plain data (an int, a dict of strings) resolves no global and raises no audit event, and
only the wrappers see it opened. The preload reports its counts two ways: a scheduler
handler (``audit-count``, a msgpack reply) the test calls mid-run, and a JSON file written
by its teardown. With remote code off (the default), a full workload from a client and
from tasks opens nothing, and ``run_on_scheduler`` and scheduler plugins sent by a client
are refused; with ``--allow-remote-code`` the same hook does count the code it runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import dask
import dask.array as da
import numpy as np
import pytest

from conveyor import (
    Client,
    Event,
    Lock,
    NannyPlugin,
    Queue,
    SchedulerPlugin,
    Semaphore,
    Variable,
    WorkerPlugin,
    fire_and_forget,
    get_client,
)
from conveyor.testing.cluster import until_sync

pd = pytest.importorskip("pandas")
dd = pytest.importorskip("dask.dataframe")

pytestmark = pytest.mark.e2e

# worker processes cannot import this test module: its functions and classes travel by
# value, so every pickle of them names cloudpickle's globals (the scheduler would have to
# resolve them to open one)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

PRELOAD = '''
"""Counts unpickling in this process; reports through a handler and at teardown."""
import json
import os
import pickle
import sys
import threading
import traceback

import click
import cloudpickle
import cloudpickle.cloudpickle

EVENTS = []  # {"kind", "detail", "thread", "stack" (the first few only)}
STACKS = 5
_busy = threading.local()


def _record(kind, detail):
    if getattr(_busy, "on", False):  # formatting a stack never re-enters
        return
    _busy.on = True
    try:
        stack = "".join(traceback.format_stack()[:-2]) if len(EVENTS) < STACKS else ""
        EVENTS.append(
            {"kind": kind, "detail": detail, "thread": threading.current_thread().name,
             "stack": stack}
        )
    finally:
        _busy.on = False


def _hook(event, args):
    if event == "pickle.find_class":
        _record(event, f"{args[0]}.{args[1]}")


_real_loads, _real_load = pickle.loads, pickle.load


def _loads(data, /, *args, **kwargs):
    _record("pickle.loads", type(data).__name__)
    return _real_loads(data, *args, **kwargs)


def _load(file, /, *args, **kwargs):
    _record("pickle.load", repr(file))
    return _real_load(file, *args, **kwargs)


# installed as the scheduler is made (the preload is imported by its constructor), before
# it listens: everything a peer could send is covered. conveyor calls pickle.loads through
# the module (no "from pickle import loads" binds the original early); an Unpickler used
# directly is still seen by find_class as soon as its pickle names a global
sys.addaudithook(_hook)
for module in (pickle, cloudpickle, cloudpickle.cloudpickle):
    if getattr(module, "loads", None) is _real_loads:
        module.loads = _loads
    if getattr(module, "load", None) is _real_load:
        module.load = _load

OUT = []


def summary():
    kinds = {}
    for e in EVENTS:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    return {"count": len(EVENTS), "kinds": kinds, "events": list(EVENTS)}


@click.command()
@click.argument("out")
def conveyor_setup(server, out):
    OUT.append(out)
    server.handlers["audit-count"] = lambda peer, msg: summary()


def conveyor_teardown(server):
    with open(OUT[0] + ".tmp", "w") as f:
        json.dump(summary(), f)
    os.replace(OUT[0] + ".tmp", OUT[0])
'''


# ------------------------------------------------------------------ processes


class Procs:
    """``conveyor`` processes started by a test, each in its own process group with its
    stderr in a file; stopped with SIGTERM, killed (by pid) if they do not exit."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.directory / f"{name}.log"
        with open(log, "wb") as err:
            p = subprocess.Popen(
                [sys.executable, "-m", "conveyor", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                process_group=0,
            )
        self.started.append((p, log))
        return p

    def stderr(self, p: subprocess.Popen[bytes]) -> str:
        return next(log.read_text() for q, log in self.started if q is p)

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 20) -> int:
        """SIGTERM ``p`` and wait for it to exit; its exit status."""
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        return p.wait(timeout)

    def kill_all(self) -> None:
        for p, _ in self.started:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    started = Procs(tmp_path)
    yield started
    started.kill_all()


def start_scheduler(
    procs: Procs, tmp_path: Path, *extra: str
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """A scheduler with the audit preload; its process, address and report file."""
    preload = tmp_path / "audit_preload.py"
    preload.write_text(PRELOAD)
    report = tmp_path / "audit.json"
    p = procs.start(
        "scheduler",
        "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
        "--scheduler-file", str(tmp_path / "scheduler.json"), "--preload", str(preload),
        "--preload-argv", str(report), *extra,
    )  # fmt: skip

    started = re.compile(r"Scheduler started at (tcp://127\.0\.0\.1:\d+)")

    def ready() -> bool:  # logged once the preload's setup ran
        assert p.poll() is None, procs.stderr(p)
        return started.search(procs.stderr(p)) is not None

    until_sync(ready, timeout=30, what="the scheduler to start")
    match = started.search(procs.stderr(p))
    assert match is not None
    return p, match.group(1), report


def audit(client: Client) -> dict[str, Any]:
    """The preload's counts so far, asked of the scheduler mid-run."""
    reply: dict[str, Any] = client.sync(client._request, {"op": "audit-count"})
    return reply


def described(report: dict[str, Any]) -> str:
    """The events of a report, for a failing assertion: what was resolved, and where."""
    lines = [f"{report['count']} unpickling event(s) in the scheduler: {report['kinds']}"]
    for e in report["events"][:20]:
        lines.append(f"- {e['kind']} {e['detail']} (thread {e['thread']})")
        if e["stack"]:
            lines.append(e["stack"])
    return "\n".join(lines)


def assert_nothing_unpickled(report: dict[str, Any]) -> None:
    assert report["count"] == 0, described(report)


# --------------------------------------------------------- what the tasks run


class Point:
    """A user class: opening its pickle means resolving it (and cloudpickle's globals)."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))


class Counter:
    """An actor."""

    def __init__(self, start: int) -> None:
        self.n = start

    def increment(self, by: int = 1) -> int:
        self.n += by
        return self.n


class Boom(Exception):
    """An exception class only this module defines."""


class Stamp(WorkerPlugin):
    """Marks the workers it is set up on."""

    name = "audit-stamp"

    def __init__(self, mark: Point) -> None:
        self.mark = mark

    def setup(self, worker: Any) -> None:
        worker.audit_stamp = self.mark


class NannyStamp(NannyPlugin):
    """Marks the nannies it is set up in."""

    name = "audit-nanny-stamp"

    def setup(self, nanny: Any) -> None:
        nanny.audit_stamp = Point(5, 6)


class Watcher(SchedulerPlugin):
    """A scheduler plugin a client tries to register."""

    name = "audit-watcher"

    def add_worker(self, scheduler: Any, worker: str) -> None:
        pass


def raise_boom(x: int) -> int:
    raise Boom(f"boom {x}")


def flaky(path: str) -> str:
    """Fails the first time it runs, then succeeds (the attempts counted in a file)."""
    p = Path(path)
    attempts = int(p.read_text()) + 1 if p.exists() else 1
    p.write_text(str(attempts))
    if attempts == 1:
        raise Boom("first attempt")
    return f"ok after {attempts}"


def from_a_task(n: int) -> int:
    """Submits tasks from inside a task, through the worker's client."""
    client = get_client()
    return sum(client.gather(client.map(lambda i: i * i, range(n))))


def put_in_queue(q: Queue, v: Variable, ev: Event) -> int:
    client = get_client()
    q.put(Point(7, 8))
    q.put(client.submit(pow, 2, 10, pure=False))
    v.set(Point(9, 10))
    ev.set()
    return 2


def guarded(lock: Lock, sem: Semaphore) -> int:
    with lock, sem:
        return 1


def stamp_of(dask_worker: Any) -> Any:
    return dask_worker.audit_stamp


def gated(gate: Event) -> bool:
    return bool(gate.wait(timeout=30))


def log_from_a_task(n: int) -> int:
    get_client().log_event("audit-topic", {"n": n, "s": "from a task"})
    return n


# ------------------------------------------------------------------ the tests


def workload(client: Client, tmp_path: Path) -> None:
    """Everything a client and its tasks can ask of a scheduler, short of remote code."""
    offset = 7

    def add_offset(x: int) -> int:  # a closure: pickled by value
        return x + offset

    # submit, map, gather: lambdas, closures and objects of classes defined here
    assert client.submit(lambda x: x * 2, 21).result() == 42
    assert client.submit(add_offset, 1).result() == 8
    assert client.gather(client.map(add_offset, range(10))) == [i + 7 for i in range(10)]
    assert client.submit(lambda p: Point(p.y, p.x), Point(1, 2)).result() == Point(2, 1)
    assert client.submit(from_a_task, 5).result() == sum(i * i for i in range(5))

    # scatter, tasks on scattered data, broadcast, replicate
    [arr] = client.scatter([np.arange(1000)])
    # scattered data is pickled by reference when plain pickle can (a Point would name
    # this module, which workers cannot import): scatter code, made by cloudpickle
    maker = client.scatter(lambda: Point(3, 4), broadcast=True)
    assert client.submit(np.sum, arr).result() == 499500
    assert client.submit(lambda m, a: m().x + int(a[1]), maker, arr).result() == 4
    point = client.submit(lambda m: m(), maker)
    client.replicate([arr], n=2)
    assert sum(len(w) for w in client.who_has([arr]).values()) == 2

    # dask.array: several layers, a rechunk that moves data between the workers
    x = da.arange(200 * 200, chunks=4000).reshape(200, 200).rechunk((200, 20))
    y = (x * 2 + 1).rechunk((20, 200)).T.sum(axis=0)
    xn = np.arange(200 * 200).reshape(200, 200)
    np.testing.assert_array_equal(client.compute(y).result(), (xn * 2 + 1).T.sum(axis=0))
    (mean,) = dask.compute(x.mean(), scheduler=client)
    assert mean == xn.mean()

    # dask.dataframe: a groupby across partitions
    pdf = pd.DataFrame({"g": np.arange(1000) % 7, "v": np.arange(1000.0)})
    ddf = dd.from_pandas(pdf, npartitions=4)
    got = client.compute(ddf.groupby("g").v.sum()).result()
    pd.testing.assert_series_equal(got.sort_index(), pdf.groupby("g").v.sum())
    persisted = client.persist(ddf[ddf.v > 500])
    assert len(persisted) == (pdf.v > 500).sum()

    # actors: create, call a method, read an attribute
    counter = client.submit(Counter, 10, actor=True).result()
    assert counter.increment(5).result() == 15
    assert counter.n == 15

    # coordination primitives, from the client and from a task
    lock, sem = Lock("audit-lock"), Semaphore(max_leases=2, name="audit-sem")
    q, v, ev = Queue("audit-queue"), Variable("audit-var"), Event("audit-event")
    assert client.submit(put_in_queue, q, v, ev, pure=False).result() == 2
    assert ev.wait(timeout=10)
    assert q.get(timeout=10) == Point(7, 8)
    assert q.get(timeout=10).result() == 1024
    assert v.get(timeout=10) == Point(9, 10)
    fut = client.submit(add_offset, 100)
    v.set(fut)
    assert v.get(timeout=10).result() == 107
    q.put(Point(0, 0))
    assert q.get(timeout=10) == Point(0, 0)
    assert lock.acquire(timeout=10)
    assert lock.locked()
    assert lock.release()
    assert sem.acquire(timeout=10)
    assert sem.release()
    assert client.gather(client.map(guarded, [lock] * 3, [sem] * 3, pure=False)) == [1] * 3

    # datasets and metadata
    client.publish_dataset(fut, name="audit-dataset")
    client.publish_dataset(point=point)
    assert client.get_dataset("audit-dataset").result() == 107
    assert client.get_dataset("point").result() == Point(3, 4)
    client.set_metadata(["audit", "meta"], {"a": 1, "b": "c"})
    assert client.get_metadata(["audit", "meta"]) == {"a": 1, "b": "c"}

    # plugins registered from the client: a worker plugin and a nanny plugin
    assert set(client.register_plugin(Stamp(Point(1, 1)))) == set(client.run(os.getpid))
    assert set(client.run(stamp_of).values()) == {Point(1, 1)}
    client.register_plugin(NannyStamp())
    assert set(client.run(stamp_of, nanny=True).values()) == {Point(5, 6)}

    # events: msgpack values only (refused on the client otherwise)
    client.log_event("audit-topic", {"n": 1, "s": "x"})
    assert [msg for _, msg in client.get_events("audit-topic")] == [{"n": 1, "s": "x"}]
    with pytest.raises(TypeError, match="msgpack"):
        client.log_event("audit-topic", Point(1, 1))

    client.submit(log_from_a_task, 2).result()
    assert [m["n"] for _, m in client.get_events("audit-topic")] == [1, 2]

    # cancelling, fire_and_forget, uploaded modules, the task stream
    gate = Event("audit-gate")
    waiting = client.submit(gated, gate, pure=False)
    client.cancel([waiting])
    assert waiting.cancelled()
    done = Event("audit-done")
    fire_and_forget(client.submit(lambda e: e.set(), done, pure=False))
    assert done.wait(timeout=10)
    gate.set()  # lets the cancelled task's thread go, if it had started
    module = tmp_path / "audit_upload.py"
    module.write_text("VALUE = 41\n")
    client.upload_file(str(module))
    assert client.submit(lambda: __import__("audit_upload").VALUE + 1).result() == 42

    # code run on workers
    pids = client.run(lambda: os.getpid())
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()

    # errors travel to the client; retries; recreating an error here
    failing = client.submit(raise_boom, 3)
    with pytest.raises(Boom, match="boom 3"):
        failing.result()
    with pytest.raises(Boom, match="boom 3"):
        client.recreate_error_locally(failing)
    attempts = str(tmp_path / "attempts")
    retried = client.submit(flaky, attempts, retries=2, pure=False)
    assert retried.result() == "ok after 2"
    assert retried.key in {r["key"] for r in client.get_task_stream()}

    # a restart: the nannies start new workers, which get the stored plugin bytes again
    client.restart(timeout=60)
    assert set(client.run(os.getpid).values()).isdisjoint(pids.values())
    assert set(client.run(stamp_of).values()) == {Point(1, 1)}
    assert client.submit(add_offset, 3).result() == 10


def test_a_full_workload_unpickles_nothing_in_the_scheduler(procs: Procs, tmp_path: Path) -> None:
    scheduler, address, report = start_scheduler(procs, tmp_path)
    sf = str(tmp_path / "scheduler.json")
    args = ["worker", "--scheduler-file", sf, "--nthreads", "2", "--host", "127.0.0.1"]
    workers = [procs.start(f"worker-{i}", *args, "--name", f"audit-{i}") for i in range(2)]
    with Client(address, timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
        assert_nothing_unpickled(audit(client))  # the check itself is msgpack
        workload(client, tmp_path)
        assert_nothing_unpickled(audit(client))

        # code for the scheduler itself is refused: it is not opened to be refused
        offset = 1
        with pytest.raises(PermissionError, match="does not run code from clients"):
            client.run_on_scheduler(lambda: offset)
        with pytest.raises(PermissionError, match="does not run code from clients"):
            client.run_on_scheduler(os.getpid)
        with pytest.raises(PermissionError, match="does not run code from clients"):
            client.register_plugin(Watcher())
        assert_nothing_unpickled(audit(client))
    for w in workers:
        assert procs.stop(w) == 0, procs.stderr(w)
    assert procs.stop(scheduler) == 0, procs.stderr(scheduler)
    final = json.loads(report.read_text())  # written by the preload's teardown
    assert_nothing_unpickled(final)


def where(point: Point, dask_scheduler: Any = None) -> tuple[str, int]:
    return dask_scheduler.address, point.x + point.y


def test_the_hook_counts_the_code_a_scheduler_was_allowed_to_run(
    procs: Procs, tmp_path: Path
) -> None:
    scheduler, address, report = start_scheduler(procs, tmp_path, "--allow-remote-code")
    with Client(address, timeout=30) as client:
        assert_nothing_unpickled(audit(client))
        assert client.run_on_scheduler(where, Point(1, 2)) == (address, 3)
        seen = audit(client)
        # the function, its argument (a class of this module, by value): both opened
        assert seen["kinds"]["pickle.loads"] >= 2, described(seen)
        resolved = {e["detail"] for e in seen["events"] if e["kind"] == "pickle.find_class"}
        assert any(d.startswith("cloudpickle") for d in resolved), described(seen)
        # plain data resolves no global: only the loads wrapper sees it opened (three
        # pickles, the function and its arguments; one global, builtins.len)
        assert client.run_on_scheduler(len, [1, 2, 3]) == 3
        after = audit(client)
        opened = after["kinds"]["pickle.loads"] - seen["kinds"]["pickle.loads"]
        resolved_now = after["kinds"]["pickle.find_class"] - seen["kinds"]["pickle.find_class"]
        assert opened > resolved_now >= 1, described(after)
        # a scheduler plugin from the client: accepted, and opened where the hook sees it
        client.register_plugin(Watcher())
        plugged = audit(client)
        assert plugged["kinds"]["pickle.find_class"] > after["kinds"]["pickle.find_class"]
    assert procs.stop(scheduler) == 0, procs.stderr(scheduler)
    final = json.loads(report.read_text())
    assert final["count"] >= plugged["count"] > 0
    assert final["events"][0]["stack"]  # the first events say where they happened
