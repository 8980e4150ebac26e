"""Events the worker's state machine consumes and the instructions it emits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conveyor.core.types import Key, Priority

# ----------------------------------------------------------------------- events


@dataclass(slots=True)
class WorkerEvent:
    """Base class. ``now`` is the caller's clock, in seconds."""

    now: float


@dataclass(slots=True)
class ComputeTaskEvent(WorkerEvent):
    key: Key
    run_spec: Any
    priority: Priority
    who_has: dict[Key, list[str]] = field(default_factory=dict)
    nbytes: dict[Key, int] = field(default_factory=dict)
    duration: float = 0.5
    run_id: int = 0
    #: a client waits for this result (the shell may send it along when small)
    inline: bool = False
    #: resource name -> amount the task holds while it runs (None: no restriction)
    resources: dict[str, float] | None = None


@dataclass(slots=True)
class FreeKeysEvent(WorkerEvent):
    keys: list[Key]


@dataclass(slots=True)
class RefreshWhoHasEvent(WorkerEvent):
    who_has: dict[Key, list[str]]


@dataclass(slots=True)
class ExecuteSuccess(WorkerEvent):
    """The shell ran the task and stored its result under ``key``."""

    key: Key
    nbytes: int
    type: str | None
    start: float
    stop: float


@dataclass(slots=True)
class ExecuteFailure(WorkerEvent):
    key: Key
    exception: Any
    traceback: Any
    exception_text: str
    traceback_text: str
    start: float
    stop: float


@dataclass(slots=True)
class GatherDepDone(WorkerEvent):
    """A fetch from ``worker`` ended: the shell stored ``received``; ``missing`` were
    not there; ``failed`` means the peer could not be reached at all; ``busy`` means it
    was serving as many transfers as it allows (``worker.connections.incoming``) and
    sent nothing."""

    worker: str
    received: dict[Key, int]
    missing: list[Key] = field(default_factory=list)
    failed: bool = False
    busy: bool = False


@dataclass(slots=True)
class RetryBusyWorkerEvent(WorkerEvent):
    """The wait asked for by ``RetryBusyWorkerLater`` is over: ``worker`` may be asked
    again."""

    worker: str


@dataclass(slots=True)
class UpdateDataEvent(WorkerEvent):
    """Data was put straight into this worker's store (scatter)."""

    data: dict[Key, int]


@dataclass(slots=True)
class AcquireReplicasEvent(WorkerEvent):
    """The scheduler asks for copies of these keys (replicate, rebalance, retire): fetch
    each from the workers listed and keep it; report it with ``AddKeysMsg``."""

    who_has: dict[Key, list[str]]
    nbytes: dict[Key, int] = field(default_factory=dict)


@dataclass(slots=True)
class PauseEvent(WorkerEvent):
    """The worker's memory crossed the pause threshold (``paused``) or fell back below
    it: while paused, no new task starts and no data is fetched; running tasks finish."""

    paused: bool


@dataclass(slots=True)
class SecedeEvent(WorkerEvent):
    """The task ``key`` left the thread budget to wait on other tasks (``secede()``):
    it goes on running, as long-running, and its slot is free for another task."""

    key: Key


@dataclass(slots=True)
class RejoinEvent(WorkerEvent):
    """The seceded task ``key`` wants a slot back (``rejoin()``); its thread waits for
    ``Rejoined``."""

    key: Key


# ----------------------------------------------------------------- instructions


@dataclass(slots=True)
class Execute:
    key: Key


@dataclass(slots=True)
class GatherDep:
    worker: str
    keys: list[Key]
    total_nbytes: int


@dataclass(slots=True)
class RetryBusyWorkerLater:
    """``worker`` answered busy: send ``RetryBusyWorkerEvent`` after ``delay`` seconds.
    Meanwhile what it holds is fetched from other holders, if there are any."""

    worker: str
    delay: float


@dataclass(slots=True)
class DeleteData:
    keys: list[Key]


@dataclass(slots=True)
class TaskFinishedMsg:
    key: Key
    nbytes: int
    type: str | None
    start: float
    stop: float
    run_id: int = 0


@dataclass(slots=True)
class TaskErredMsg:
    key: Key
    exception: Any
    traceback: Any
    exception_text: str
    traceback_text: str
    start: float
    stop: float
    run_id: int = 0


@dataclass(slots=True)
class AddKeysMsg:
    keys: dict[Key, int]


@dataclass(slots=True)
class Rejoined:
    """The seceded task ``key`` holds a slot again: its waiting thread may go on."""

    key: Key


@dataclass(slots=True)
class LongRunningMsg:
    """Tell the scheduler that ``key`` seceded: its expected time stops counting
    against this worker, and its slot is free."""

    key: Key
    run_id: int = 0


@dataclass(slots=True)
class MissingDataMsg:
    key: Key
    errant_worker: str


@dataclass(slots=True)
class PausedMsg:
    """Tell the scheduler the worker paused (memory over the pause threshold: send it
    no more work) or resumed."""

    paused: bool


WorkerInstruction = (
    Execute
    | GatherDep
    | RetryBusyWorkerLater
    | DeleteData
    | TaskFinishedMsg
    | TaskErredMsg
    | AddKeysMsg
    | MissingDataMsg
    | Rejoined
    | LongRunningMsg
    | PausedMsg
)
