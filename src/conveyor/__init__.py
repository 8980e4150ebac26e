"""conveyor: a dynamic distributed task scheduler with the dask.distributed API."""

from conveyor.client.actor import Actor, ActorFuture
from conveyor.client.client import Client, default_client
from conveyor.client.collections import fire_and_forget, futures_of
from conveyor.client.coordination import Event, Lock, Queue, Semaphore, Variable
from conveyor.client.future import CancelledError, Future, KilledWorker
from conveyor.client.secession import rejoin, secede
from conveyor.client.task_stream import get_task_stream
from conveyor.client.waiting import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    as_completed,
    wait,
)
from conveyor.client.worker_client import get_client, worker_client
from conveyor.comm.security import Security
from conveyor.deploy.local import LocalCluster
from conveyor.diagnostics.progress import progress
from conveyor.diagnostics.report import performance_report
from conveyor.rpc import RemoteError
from conveyor.server.nanny import Nanny
from conveyor.server.plugin import NannyPlugin, SchedulerPlugin, WorkerPlugin
from conveyor.server.scheduler import Scheduler
from conveyor.server.worker import Worker, get_worker

__version__ = "0.1.0"

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "Actor",
    "ActorFuture",
    "CancelledError",
    "Client",
    "Event",
    "Future",
    "KilledWorker",
    "LocalCluster",
    "Lock",
    "Nanny",
    "NannyPlugin",
    "Queue",
    "RemoteError",
    "Scheduler",
    "SchedulerPlugin",
    "Security",
    "Semaphore",
    "Variable",
    "Worker",
    "WorkerPlugin",
    "__version__",
    "as_completed",
    "default_client",
    "fire_and_forget",
    "futures_of",
    "get_client",
    "get_task_stream",
    "get_worker",
    "performance_report",
    "progress",
    "rejoin",
    "secede",
    "wait",
    "worker_client",
]
