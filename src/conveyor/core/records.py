"""Slotted records the scheduler keeps about tasks, task groups, workers and clients.

They hold state only; every change to them is made by :class:`SchedulerState`.
"""

from __future__ import annotations

from typing import Any, Final, Generic, TypeVar, cast

from conveyor.core.types import SCHEDULER_STATES, Key, Priority

T = TypeVar("T")

#: Shared stand-in for an empty set, replaced by a real set on the first insertion. Most
#: of a task's sets are empty most of its life, and an empty set costs 216 bytes.
EMPTY: Final[set[Any]] = cast(set[Any], frozenset())


class TaskPrefix:
    """All tasks sharing a key prefix (``"inc"`` for ``"inc-abc123"``); learns durations."""

    __slots__ = (
        "_duration_count",
        "_duration_sum",
        "duration_average",
        "name",
        "ngroups",
        "states",
    )

    def __init__(self, name: str, default_duration: float | None) -> None:
        self.name = name
        #: How many of its tasks are in each state, kept up to date by every transition
        #: (a snapshot for the dashboard: reading it never walks the tasks). The
        #: ``"forgotten"`` entry counts the tasks forgotten so far; the others live tasks.
        self.states: dict[str, int] = dict.fromkeys(SCHEDULER_STATES, 0)
        #: Exponentially weighted mean run time in seconds, or None while unknown.
        self.duration_average: float | None = default_duration
        self._duration_count = 0
        self._duration_sum = 0.0
        #: live task groups of this prefix (at 0 it may be forgotten: core/housekeeping.py)
        self.ngroups = 0

    def add_duration(self, seconds: float) -> None:
        """Fold one observed run time into the running estimate."""
        if seconds < 0:
            return
        self._duration_count += 1
        self._duration_sum += seconds
        old = self.duration_average
        if old is None or self._duration_count == 1:
            self.duration_average = seconds
        else:
            self.duration_average = 0.5 * old + 0.5 * seconds

    def __repr__(self) -> str:
        return f"<TaskPrefix {self.name!r} avg={self.duration_average}>"


class TaskGroup:
    """Tasks sharing a group name (key prefix plus token); used to spot root-ish tasks."""

    __slots__ = ("dependencies", "dependents", "name", "ntasks", "prefix", "states")

    def __init__(self, name: str, prefix: TaskPrefix) -> None:
        self.name = name
        self.prefix = prefix
        #: the prefix's per-state counts (the same dict: one lookup less per transition)
        self.states = prefix.states
        #: Number of live (not forgotten) tasks in the group.
        self.ntasks = 0
        #: Other groups some task of this one depends on.
        self.dependencies: set[TaskGroup] = set()
        #: The groups whose ``dependencies`` hold this one (the reverse links, so that a
        #: forgotten group leaves the others without a scan of every group).
        self.dependents: set[TaskGroup] = set()

    def __repr__(self) -> str:
        return f"<TaskGroup {self.name!r} n={self.ntasks}>"


class _RareFields:
    """Task fields that most tasks never set: errors, retries, restrictions."""

    __slots__ = (
        "erred_on",
        "exception",
        "exception_blame",
        "exception_text",
        "loose_restrictions",
        "resource_restrictions",
        "retries",
        "suspicious",
        "traceback",
        "traceback_text",
        "worker_restrictions",
    )

    erred_on: set[str]
    exception: Any
    exception_blame: TaskState | None
    exception_text: str
    loose_restrictions: bool
    resource_restrictions: dict[str, float] | None
    retries: int
    suspicious: int
    traceback: Any
    traceback_text: str
    worker_restrictions: frozenset[Any] | None

    def __init__(self) -> None:
        for name, value in _RARE_DEFAULTS.items():
            setattr(self, name, value)


_RARE_DEFAULTS: dict[str, Any] = {
    "erred_on": EMPTY,
    "exception": None,
    "exception_blame": None,
    "exception_text": "",
    "loose_restrictions": False,
    "resource_restrictions": None,
    "retries": 0,
    "suspicious": 0,
    "traceback": None,
    "traceback_text": "",
    "worker_restrictions": None,
}


class _RareField(Generic[T]):
    """A TaskState attribute stored in its ``_RareFields`` record, made on first set."""

    __slots__ = ("default", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.default: T = _RARE_DEFAULTS[name]

    def __get__(self, ts: TaskState, owner: object = None) -> T:
        rare = ts._rare
        if rare is None:
            return self.default
        value: T = getattr(rare, self.name)
        return value

    def __set__(self, ts: TaskState, value: T) -> None:
        rare = ts._rare
        if rare is None:
            default = self.default
            if value is default or (type(value) is type(default) and value == default):
                return
            rare = ts._rare = _RareFields()
        setattr(rare, self.name, value)


class TaskState:
    """What the scheduler knows about one task. The run spec is opaque bytes."""

    __slots__ = (
        "_rare",
        "dependencies",
        "dependents",
        "function",
        "group",
        "key",
        "nbytes",
        "nwaiting",
        "priority",
        "processing_on",
        "run_id",
        "run_spec",
        "state",
        "type",
        "waiters",
        "who_has",
        "who_wants",
    )

    # Fields most tasks never set live in a record made on first use (see _RareFields),
    # which saves 72 bytes per task; they read and write like plain attributes.
    exception: _RareField[Any] = _RareField("exception")
    traceback: _RareField[Any] = _RareField("traceback")
    exception_text: _RareField[str] = _RareField("exception_text")
    traceback_text: _RareField[str] = _RareField("traceback_text")
    exception_blame: _RareField[TaskState | None] = _RareField("exception_blame")
    erred_on: _RareField[set[str]] = _RareField("erred_on")
    suspicious: _RareField[int] = _RareField("suspicious")
    retries: _RareField[int] = _RareField("retries")
    worker_restrictions: _RareField[frozenset[str] | None] = _RareField("worker_restrictions")
    loose_restrictions: _RareField[bool] = _RareField("loose_restrictions")
    #: resource name -> amount the task holds on its worker while processing there
    resource_restrictions: _RareField[dict[str, float] | None] = _RareField("resource_restrictions")

    @property
    def prefix(self) -> TaskPrefix:
        """The task's key prefix (shared by its group)."""
        return self.group.prefix

    def __init__(
        self,
        key: Key,
        run_spec: Any,
        group: TaskGroup,
        priority: Priority = (),
        dependencies: tuple[TaskState, ...] = (),
        who_wants: tuple[ClientInfo, ...] = (),
        function: str | None = None,
    ) -> None:
        self.key = key
        #: Opaque to the scheduler: serialized task bytes, or an index into the shared
        #: blob ``function`` (a chunk of graph nodes or call arguments); None for
        #: scattered data.
        self.run_spec = run_spec
        self.group = group
        self.state = "released"
        self.priority = priority
        #: Fixed at submission (emptied when forgotten).
        self.dependencies = dependencies
        #: The sets below start as the shared ``EMPTY``; see ``add_to``/``discard_from``.
        self.dependents: set[TaskState] = EMPTY
        #: Number of dependencies not yet in memory (only while waiting).
        self.nwaiting = 0
        #: Dependents in an active state that still need this task's result.
        self.waiters: set[TaskState] = EMPTY
        #: Clients holding futures for this key (rarely more than one).
        self.who_wants = who_wants
        self.who_has: set[WorkerInfo] = EMPTY
        self.processing_on: WorkerInfo | None = None
        self.nbytes = -1
        self.type: str | None = None
        #: id of the latest ComputeTask sent for this task (see ComputeTask.run_id)
        self.run_id = 0
        #: id of the shared function this task calls (see SchedulerState.functions)
        self.function = function
        self._rare: _RareFields | None = None

    def __repr__(self) -> str:
        return f"<TaskState {self.key!r} {self.state}>"

    @property
    def waiting_on(self) -> set[TaskState]:
        """Dependencies not yet in memory, while waiting (computed; for diagnostics)."""
        if self.state != "waiting":
            return set()
        return {d for d in self.dependencies if d.state != "memory"}

    def __lt__(self, other: TaskState) -> bool:
        return self.priority < other.priority

    # Hashing is by identity (CPython's own, in C): a scheduler puts each task into a
    # few sets, and a Python-level __hash__ cost a third of adding a task. Sets of tasks
    # then iterate in an order that depends on memory addresses; nothing may rely on it.


class ReplayableTaskState(TaskState):
    """A task hashed by key, so sets of tasks iterate in the same order on every run.

    Used by schedulers made with ``replayable=True`` (the seeded simulation), where a
    failing seed must replay exactly. Equality stays identity.
    """

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(self.key)


class WorkerInfo:
    """What the scheduler knows about one worker."""

    __slots__ = (
        "address",
        "functions",
        "has_what",
        "host",
        "last_seen",
        "long_running",
        "memory_limit",
        "metrics",
        "name",
        "nanny",
        "nbytes",
        "nthreads",
        "occupancy",
        "processing",
        "resources",
        "status",
        "unserved",
        "used_resources",
    )

    def __init__(
        self,
        address: str,
        name: str | int,
        nthreads: int,
        memory_limit: int,
        host: str,
        now: float,
        resources: dict[str, float] | None = None,
        nanny: bool = False,
    ) -> None:
        self.address = address
        self.name = name
        #: a nanny runs this worker, and reports how its process ended
        self.nanny = nanny
        #: peers' failed fetches of data it holds: (count, time of the last)
        self.unserved = (0, 0.0)
        self.nthreads = nthreads
        self.memory_limit = memory_limit
        self.host = host
        self.status = "running"
        #: Tasks sent to this worker and not yet finished, with their expected durations.
        self.processing: dict[TaskState, float] = {}
        #: Sum of expected durations of ``processing``, kept incrementally.
        self.occupancy = 0.0
        #: tasks of ``processing`` that seceded: they run on outside the worker's slots
        self.long_running: set[TaskState] = set()
        self.has_what: set[TaskState] = set()
        #: Sum of nbytes of ``has_what``, kept incrementally.
        self.nbytes = 0
        self.last_seen = now
        self.metrics: dict[str, Any] = {}
        #: ids of the shared functions already sent to this worker
        self.functions: set[str] = set()
        #: resource name -> amount the worker declared (``Worker(resources=...)``)
        self.resources: dict[str, float] = dict(resources or {})
        #: resource name -> amount held by the restricted tasks processing here
        self.used_resources: dict[str, float] = dict.fromkeys(self.resources, 0.0)

    def __repr__(self) -> str:
        return (
            f"<WorkerInfo {self.address!r} name={self.name!r} threads={self.nthreads} "
            f"processing={len(self.processing)} memory={len(self.has_what)}>"
        )

    def __lt__(self, other: WorkerInfo) -> bool:
        return self.address < other.address

    def __hash__(self) -> int:
        return hash(self.address)


class ClientInfo:
    """A connected client and the keys it wants kept."""

    __slots__ = ("alone", "client_id", "last_seen", "wants_what")

    def __init__(self, client_id: str, now: float) -> None:
        self.client_id = client_id
        self.last_seen = now
        self.wants_what: set[TaskState] = set()
        #: ``(self,)``: the ``who_wants`` of every task only this client wants, shared
        self.alone: tuple[ClientInfo, ...] = (self,)

    def __repr__(self) -> str:
        return f"<ClientInfo {self.client_id!r} wants={len(self.wants_what)}>"

    def __hash__(self) -> int:
        return hash(self.client_id)


class SharedBlob:
    """Opaque bytes many tasks share (a function, or a chunk of graph nodes or call
    arguments), sent to each worker once and dropped when no task uses it.

    ``requires`` names another blob this one refers to (a chunk of call arguments
    refers to its function): it is sent along and held while this blob lives.
    """

    __slots__ = ("data", "holders", "refs", "requires")

    def __init__(self, data: Any, requires: str | None = None) -> None:
        self.data = data
        #: tasks (and blobs, through ``requires``) using this blob
        self.refs = 0
        self.requires = requires
        #: address -> the worker it was sent to (an entry may outlive its worker: a
        #: worker that left, or re-registered, is checked against ``workers`` on use)
        self.holders: dict[str, WorkerInfo] = {}

    def __repr__(self) -> str:
        return f"<SharedBlob refs={self.refs} requires={self.requires!r}>"


def add_to(owner: Any, attr: str, item: Any) -> None:
    """``getattr(owner, attr).add(item)``, turning the shared ``EMPTY`` into a real set."""
    current = getattr(owner, attr)
    if current is EMPTY:
        setattr(owner, attr, {item})
    else:
        current.add(item)


def discard_from(owner: Any, attr: str, item: Any) -> None:
    """Remove ``item`` if present; an emptied set goes back to the shared ``EMPTY``."""
    current = getattr(owner, attr)
    if item in current:
        current.discard(item)
        if not current:
            setattr(owner, attr, EMPTY)
