"""conveyor: a dynamic distributed task scheduler with the dask.distributed API."""

from conveyor.client.client import Client, default_client
from conveyor.client.collections import futures_of
from conveyor.client.future import CancelledError, Future, KilledWorker
from conveyor.client.waiting import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    as_completed,
    wait,
)
from conveyor.deploy.local import LocalCluster
from conveyor.rpc import RemoteError
from conveyor.server.scheduler import Scheduler
from conveyor.server.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "CancelledError",
    "Client",
    "Future",
    "KilledWorker",
    "LocalCluster",
    "RemoteError",
    "Scheduler",
    "Worker",
    "__version__",
    "as_completed",
    "default_client",
    "futures_of",
    "wait",
]
