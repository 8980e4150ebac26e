"""Events the scheduler's state machine consumes. Each carries the time it happened."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conveyor.core.types import Key


@dataclass(slots=True)
class SchedulerEvent:
    """Base class. ``now`` is the caller's clock, in seconds."""

    now: float


@dataclass(slots=True)
class AddWorker(SchedulerEvent):
    address: str
    name: str | int
    nthreads: int
    memory_limit: int
    host: str
    #: keys the worker already holds, with their sizes
    data: dict[Key, int] = field(default_factory=dict)
    #: resource name -> amount the worker offers (``Worker(resources=...)``)
    resources: dict[str, float] = field(default_factory=dict)
    #: whether a nanny runs the worker (and will report how it ended: ``WorkerDied``)
    nanny: bool = False


@dataclass(slots=True)
class RemoveWorker(SchedulerEvent):
    address: str
    reason: str = "worker-close"
    #: the worker said it was closing (or the scheduler closed it): none of its tasks
    #: is to blame
    expected: bool = False


@dataclass(slots=True)
class WorkerDied(SchedulerEvent):
    """A nanny's report on how its worker process ended, before or after the scheduler
    saw the worker's connection close."""

    address: str
    #: how it ended, for errors and logs: ``"killed by SIGKILL"``, ``"memory limit: ..."``
    cause: str
    #: the tasks its threads were running when it ended; None when not known
    executing: list[Key] | None
    #: False when it ended without dying (it closed, or lost its scheduler)
    died: bool = True


@dataclass(slots=True)
class WorkerHeartbeat(SchedulerEvent):
    address: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class AddClient(SchedulerEvent):
    client_id: str


@dataclass(slots=True)
class RemoveClient(SchedulerEvent):
    client_id: str


@dataclass(slots=True)
class TaskSpec:
    """One task of a graph as submitted by a client. ``run_spec`` is opaque bytes."""

    key: Key
    run_spec: Any
    dependencies: tuple[Key, ...] = ()
    order: int = 0
    workers: tuple[str, ...] | None = None
    allow_other_workers: bool = False
    retries: int = 0
    #: id of a function sent once per graph in ``UpdateGraph.functions``
    function: str | None = None
    #: resource name -> amount the task needs free on its worker (None: no restriction)
    resources: dict[str, float] | None = None
    #: the task's own user priority (higher runs first); None: the update's
    priority: float | None = None


@dataclass(slots=True)
class TaskBatch:
    """Tasks calling one function on the rows of a shared argument chunk (``map``).

    Task ``i`` is ``keys[i]``; its run spec is the index ``i`` into the shared blob
    ``chunk``, which refers to the shared blob ``function``. Options apply to all.
    """

    keys: list[Key]
    function: str
    chunk: str
    #: dependencies of every task of the batch
    dependencies: tuple[Key, ...] = ()
    #: further dependencies of each task, aligned with ``keys`` (None: there are none)
    row_dependencies: list[tuple[Key, ...]] | None = None
    #: order of the first task; task ``i`` has ``order + i``
    order: int = 0
    workers: tuple[str, ...] | None = None
    allow_other_workers: bool = False
    retries: int = 0
    #: every key is ``<prefix>-<integer>`` for one prefix, so all share one task group
    one_group: bool = False
    #: the client wants every task of the batch
    wanted: bool = True
    #: resource name -> amount each task needs free on its worker (None: no restriction)
    resources: dict[str, float] | None = None


@dataclass(slots=True)
class UpdateGraph(SchedulerEvent):
    client_id: str
    tasks: list[TaskSpec]
    wanted: list[Key]
    #: user priority of the tasks that do not carry their own (higher runs first)
    user_priority: float = 0
    #: opaque pickled functions by id, shared by the tasks that name them
    functions: dict[str, Any] = field(default_factory=dict)
    #: tasks submitted in bulk, after ``tasks``
    batches: list[TaskBatch] = field(default_factory=list)

    def size(self) -> int:
        """How many tasks the update names."""
        return len(self.tasks) + sum(len(b.keys) for b in self.batches)


@dataclass(slots=True)
class WorkerPaused(SchedulerEvent):
    """The worker paused (its memory is over its pause threshold) or resumed: a paused
    worker is given no new task; what it has waits there."""

    address: str
    paused: bool


@dataclass(slots=True)
class TaskLongRunning(SchedulerEvent):
    """The task ``key`` seceded on ``worker``: it runs on, outside the worker's slots."""

    worker: str
    key: Key
    #: the ``run_id`` of the ComputeTask it answers (0: unknown)
    run_id: int = 0


@dataclass(slots=True)
class TaskFinished(SchedulerEvent):
    worker: str
    key: Key
    nbytes: int
    type: str | None = None
    start: float = 0.0
    stop: float = 0.0
    #: the ``run_id`` of the ComputeTask this answers (0: unknown)
    run_id: int = 0
    #: the serialized result, when small and wanted (passed through to clients)
    result: Any = None


@dataclass(slots=True)
class TaskErred(SchedulerEvent):
    worker: str
    key: Key
    exception: Any
    traceback: Any
    exception_text: str = ""
    traceback_text: str = ""
    start: float = 0.0
    stop: float = 0.0
    #: the ``run_id`` of the ComputeTask this answers (0: unknown)
    run_id: int = 0


@dataclass(slots=True)
class ClientDesiresKeys(SchedulerEvent):
    client_id: str
    keys: list[Key]


@dataclass(slots=True)
class ClientReleasesKeys(SchedulerEvent):
    client_id: str
    keys: list[Key]


@dataclass(slots=True)
class CancelKeys(SchedulerEvent):
    client_id: str
    keys: list[Key]
    force: bool = False


@dataclass(slots=True)
class UpdateData(SchedulerEvent):
    """A client scattered data straight to workers."""

    client_id: str
    who_has: dict[Key, list[str]]
    nbytes: dict[Key, int]


@dataclass(slots=True)
class WorkerAddKeys(SchedulerEvent):
    """A worker now holds replicas of these keys (fetched as dependencies)."""

    worker: str
    keys: dict[Key, int]


@dataclass(slots=True)
class MissingData(SchedulerEvent):
    """``worker`` could not get ``key`` from ``errant_worker``."""

    worker: str
    key: Key
    errant_worker: str


@dataclass(slots=True)
class WorkerMemorySynced(SchedulerEvent):
    """A worker's answer to a sync request (``conveyor.core.housekeeping``): keys it
    was believed to hold but does not, and keys it holds that were not named."""

    worker: str
    missing: tuple[Key, ...]
    extra: tuple[Key, ...]


@dataclass(slots=True)
class ForgetPrefixes(SchedulerEvent):
    """Housekeeping: forget the task prefixes with no task since ``emptied_before``."""

    emptied_before: float


@dataclass(slots=True)
class Tick(SchedulerEvent):
    """Periodic check (worker time-to-live)."""


# ------------------------------------------------- cluster control (conveyor.core.control)


@dataclass(slots=True)
class RetireWorkers(SchedulerEvent):
    """Place nothing more on these workers and move the tasks running there elsewhere
    (without counting against the tasks' allowed failures). Data only they hold is then
    copied away (:class:`CopyReplicas`) before the shell closes them."""

    addresses: list[str]


@dataclass(slots=True)
class CancelRetirement(SchedulerEvent):
    """These retiring workers go back to running tasks (their data could not move)."""

    addresses: list[str]


@dataclass(slots=True)
class CopyReplicas(SchedulerEvent):
    """Ask workers to fetch copies of keys in memory elsewhere: recipient -> keys. The
    copies count once the workers report them (``WorkerAddKeys``)."""

    copies: dict[str, list[Key]]


@dataclass(slots=True)
class DropReplicas(SchedulerEvent):
    """Free these copies (worker -> keys); a key's last copy is always kept."""

    replicas: dict[str, list[Key]]


@dataclass(slots=True)
class RetryKeys(SchedulerEvent):
    """Run these erred tasks again, with the erred dependencies they blame."""

    client_id: str
    keys: list[Key]


@dataclass(slots=True)
class OperatorTransition(SchedulerEvent):
    """An operator moves a task (``Scheduler.transition``): to ``released`` (what it
    holds is dropped and, if still wanted, it runs again) or to ``erred`` (it fails
    with ``reason``, wherever it is). Checked by the shell before it is applied."""

    key: Key
    finish: str
    reason: str = ""
    stimulus_id: str | None = None


@dataclass(slots=True)
class ForgetAll(SchedulerEvent):
    """Every client releases every key (``Client.restart``); clients are told their
    keys were cancelled, with ``reason``."""

    reason: str = "scheduler-restart"
