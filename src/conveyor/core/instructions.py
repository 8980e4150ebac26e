"""Instructions the scheduler's state machine emits; the server shell carries them out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conveyor.core.types import Key, Priority


@dataclass(slots=True)
class ToWorker:
    """Base class of messages to one worker."""

    worker: str


@dataclass(slots=True)
class ComputeTask(ToWorker):
    key: Key
    run_spec: Any
    priority: Priority
    who_has: dict[Key, list[str]]
    nbytes: dict[Key, int]
    duration: float
    #: id of the task's shared blob (function or chunk), and by id the bytes of those
    #: blobs it needs that this worker has not had yet
    function: str | None = None
    blobs: dict[str, Any] | None = None
    #: unique per ComputeTask; the worker echoes it so that a late answer about an
    #: earlier, since freed run of the same key is told apart from this run's
    run_id: int = 0
    #: a client waits for this result: send it back with the completion if small
    inline: bool = False
    #: resource name -> amount the task holds on the worker while it runs
    resources: dict[str, float] | None = None


@dataclass(slots=True)
class FreeKeys(ToWorker):
    keys: list[Key]


@dataclass(slots=True)
class FreeFunctions(ToWorker):
    """Shared blobs (functions, graph chunks) no task uses any more."""

    ids: list[str]


@dataclass(slots=True)
class RefreshWhoHas(ToWorker):
    who_has: dict[Key, list[str]]


@dataclass(slots=True)
class AcquireReplicas(ToWorker):
    """Fetch copies of these keys from the workers listed (and keep them)."""

    who_has: dict[Key, list[str]]
    nbytes: dict[Key, int]


@dataclass(slots=True)
class CloseWorker(ToWorker):
    reason: str


@dataclass(slots=True)
class ToClient:
    """Base class of messages to one client."""

    client_id: str


@dataclass(slots=True)
class KeyInMemory(ToClient):
    key: Key
    type: str | None
    #: addresses of the workers holding the result, so the client can fetch directly
    workers: list[str]
    #: the serialized result itself when the worker sent it along (opaque, small)
    result: Any = None


@dataclass(slots=True)
class KeyErred(ToClient):
    key: Key
    exception: Any
    traceback: Any
    exception_text: str
    traceback_text: str


@dataclass(slots=True)
class LostData(ToClient):
    key: Key


@dataclass(slots=True)
class KeysCancelled(ToClient):
    keys: list[Key]
    #: why, when not the client's own request (e.g. "scheduler-restart")
    reason: str = ""


Instruction = ToWorker | ToClient
