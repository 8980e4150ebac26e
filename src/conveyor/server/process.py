"""Child processes of servers: a ``conveyor worker`` (or nanny) subprocess in its own
process group, and waiting for a child's exit without a thread.

Used by LocalCluster (one process per worker) and by the nanny (one worker process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["STOP_GRACE", "WorkerProcess", "exit_description", "process_exit"]

logger = logging.getLogger("conveyor.nanny")

STOP_GRACE = 10.0  # seconds a worker process may take to exit after SIGTERM
STDERR_TAIL_LINES = 20


class WorkerProcess:
    """A ``conveyor worker`` subprocess: in its own process group unless ``own_group`` is
    False, its output in ``log_path`` or, if None, where this process writes;
    ``pass_fds`` are inherited (the TLS settings of ``Security.to_fd``)."""

    def __init__(
        self,
        name: int | str,
        args: list[str],
        log_path: Path | None,
        env: dict[str, str] | None = None,
        own_group: bool = True,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._own_group = own_group
        if log_path is None:  # output goes where this process's goes
            self.popen = self._start(args, env, own_group, None, pass_fds)
        else:
            with log_path.open("wb") as log:
                self.popen = self._start(args, env, own_group, log, pass_fds)

    @staticmethod
    def _start(
        args: list[str],
        env: dict[str, str] | None,
        own_group: bool,
        log: Any,
        pass_fds: tuple[int, ...],
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            env=env,
            process_group=0 if own_group else None,
            pass_fds=pass_fds,
        )

    @property
    def pid(self) -> int:
        """The worker's process id (also its process group id)."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process exited and was reaped, else ``None``."""
        return self.popen.poll()

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the worker's process group (or, when it shares its
        parent's group, to the worker alone) unless it was reaped already."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if self._own_group:
                    os.killpg(self.popen.pid, signum)
                else:
                    os.kill(self.popen.pid, signum)

    async def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for the process to exit; reap it; return if it did."""
        if self.popen.poll() is not None:
            return True
        try:
            await asyncio.wait_for(process_exit(self.popen.pid), timeout)
        except TimeoutError:
            return self.popen.poll() is not None
        self.popen.wait()
        return True

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds, and reap it."""
        self.signal(signal.SIGTERM)
        if not await self.wait(grace):
            logger.warning("Worker process %s ignored SIGTERM; killing it", self.pid)
            self.signal(signal.SIGKILL)
            await self.wait(None)

    def kill_now(self) -> None:
        """SIGKILL the process group and reap the process, blocking (for finalizers)."""
        self.signal(signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            self.popen.wait()

    def output_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        """The last ``lines`` lines the worker wrote to stdout/stderr (when logged to
        a file)."""
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"<WorkerProcess name={self.name} pid={self.pid} returncode={self.returncode}>"


async def process_exit(pid: int) -> None:
    """Return once process ``pid`` (a child, not yet reaped) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (not Linux >= 5.3): poll instead
        while not _exited(pid):
            await asyncio.sleep(0.05)
        return
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _exited(pid: int) -> bool:
    """Whether child ``pid`` is a zombie or gone, without reaping it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def exit_description(returncode: int) -> str:
    """How a process ended, for logs and errors: ``"killed by SIGKILL"`` or
    ``"exit code 3"``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"
