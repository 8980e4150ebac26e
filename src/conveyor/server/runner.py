"""The worker's task threads: run tasks, hand their outcomes back to the event loop.

``loop.run_in_executor`` costs two futures, a condition variable and one wake-up of the
event loop per task: for a task of a few microseconds that is most of the worker's time,
and one ``task-finished`` write per task. Here each thread takes jobs from a C-level
queue and appends outcomes to a deque; the loop is woken only when no wake-up is already
pending, and then takes every outcome that has piled up, so that the messages they cause
leave in one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from conveyor.protocol import FunctionStore
from conveyor.rpc.context import TaskContext, set_current_task
from conveyor.server.execute import Outcome, run_task
from conveyor.server.running_file import RunningFile

logger = logging.getLogger("conveyor.worker")

#: a job: the key, its run spec and the values of its dependencies
Job = tuple[Any, Any, dict[Any, Any]]


class TaskRunner:
    """``nthreads`` threads running tasks; ``on_done(key, outcome)`` runs on ``loop``."""

    def __init__(
        self,
        nthreads: int,
        loop: asyncio.AbstractEventLoop,
        functions: FunctionStore,
        on_done: Callable[[Any, Outcome], None],
        name: str = "conveyor-task",
        owner: Any = None,
        record: RunningFile | None = None,
    ) -> None:
        self._loop = loop
        #: where each thread notes the task it runs, for the nanny (None: no nanny)
        self._record = record
        self._name = name
        #: the worker, as tasks see it through ``conveyor.rpc.context``
        self._owner = owner
        self._started = 0
        self._functions = functions
        self._on_done = on_done
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._done: deque[tuple[Any, Outcome]] = deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._closed = False
        self.threads: list[threading.Thread] = []
        for _ in range(nthreads):
            self._start_thread()

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"{self._name}-{self._started}", daemon=True
        )
        self._started += 1
        self.threads.append(thread)
        thread.start()

    def secede_current(self) -> None:
        """The calling task thread leaves the pool (its task waits on others): a new
        thread takes its place at once, and the calling one ends with its task."""
        if not self._closed:
            self._start_thread()

    def submit(self, key: Any, run_spec: Any, deps: dict[Any, Any]) -> None:
        """Queue a task; its outcome comes back through ``on_done`` on the loop."""
        if self._closed:
            raise RuntimeError("the task runner is closed")
        self._jobs.put((key, run_spec, deps))

    def close(self) -> None:
        """Drop queued jobs and let every thread end once its current task returns."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(queue.Empty):
            while True:
                self._jobs.get_nowait()
        for _ in list(self.threads):
            self._jobs.put(None)

    def _work(self) -> None:
        jobs, done, functions, record = self._jobs, self._done, self._functions, self._record
        ctx = TaskContext(self._owner, None)
        set_current_task(ctx)
        slot = record.claim() if record is not None else -1
        while True:
            job = jobs.get()
            if job is None:
                break
            key, run_spec, deps = job
            ctx.key = key
            if record is not None:  # before the task runs: it may kill the process
                record.started(slot, key)
            try:
                outcome = run_task(key, run_spec, deps, functions)
            except BaseException as e:  # run_task reports task errors; this is a bug
                now = time.time()
                outcome = Outcome(False, now, now, exception_text=f"{type(e).__name__}: {e}")
            if record is not None:
                record.finished(slot)
            done.append((key, outcome))
            del job, deps, outcome
            self._wake()
            if ctx.seceded:  # a replacement took this thread's place when it seceded
                break
        if record is not None:
            record.release(slot)
        self._forget_thread()

    def _wake(self) -> None:
        """Have the loop take the outcomes, unless a wake-up is pending already."""
        with self._lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(self._drain)

    def _forget_thread(self) -> None:
        with contextlib.suppress(ValueError):
            self.threads.remove(threading.current_thread())

    def _drain(self) -> None:
        with self._lock:
            self._wake_pending = False
        done = self._done
        while done:
            key, outcome = done.popleft()
            if self._closed:
                continue
            try:
                self._on_done(key, outcome)
            except Exception as e:  # one bad outcome must not strand the others
                self._handling_failed(key, outcome, e)

    def _handling_failed(self, key: Any, outcome: Outcome, error: Exception) -> None:
        """``on_done`` raised for ``key``: report the task as failed, so that it does not
        stay executing with its client waiting forever."""
        text = f"{type(error).__name__}: {error}"
        logger.error("Handling the outcome of task %r failed: %s", key, text, exc_info=True)
        failed = Outcome(
            False,
            outcome.start,
            outcome.stop,
            exception_text=f"the worker could not handle the outcome of task {key!r}: {text}",
        )
        try:
            self._on_done(key, failed)
        except Exception as e:
            logger.error("Reporting task %r as failed failed too: %s: %s", key, type(e).__name__, e)
