"""Changing the cluster from a client: copy and move data (``replicate``,
``rebalance``), take workers out (``retire_workers``), run failed tasks again
(``retry``), start afresh (``restart``) and stop everything (``shutdown``).

The scheduler does the work through its state machine's events (see
``conveyor.core.control``); ``restart`` replaces the workers through their nannies, or,
for the client's own LocalCluster, through the cluster.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from conveyor import config
from conveyor.client.structure import as_list, collect_futures
from conveyor.comm import CommClosedError
from conveyor.deploy.local import LocalCluster
from conveyor.rpc.threads import run_in_thread

if TYPE_CHECKING:
    from conveyor.client.shape import ClientShape

logger = logging.getLogger("conveyor.client")


#: keywords with which the scheduler chooses workers to retire, and their types
_CHOOSING: dict[str, type | tuple[type, ...]] = {
    "n": int,
    "target": int,
    "minimum": int,
    "memory_ratio": (int, float),
}


class MaintenanceMixin:
    """The Client's calls that change where data lives and which workers run."""

    def replicate(
        self: ClientShape,
        futures: Any,
        n: int | None = None,
        workers: str | Iterable[str] | None = None,
        branching_factor: int = 2,
    ) -> Any:
        """Copy the results of ``futures`` onto ``n`` workers (all of ``workers``, or
        of the cluster, by default), dropping surplus copies among those workers.
        Copies spread as a tree: each worker holding a key sends it to at most
        ``branching_factor`` others at a time. Returns once the copies are made."""
        for name, value in (("n", n), ("branching_factor", branching_factor)):
            if value is None and name == "n":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        keys = [f.key for f in collect_futures(futures)]
        msg = {
            "op": "replicate",
            "keys": keys,
            "n": n,
            "workers": as_list(workers),
            "branching_factor": branching_factor,
        }
        return self.sync(_settled_request, self, msg, keys)

    def rebalance(
        self: ClientShape, futures: Any = None, workers: str | Iterable[str] | None = None
    ) -> Any:
        """Move data between workers (all, or ``workers``) so that each holds about the
        same number of bytes: keys of ``futures``, or all keys by default. Keys move from
        workers above the mean to those holding the least; a move happens only if it
        narrows the gap. Returns once the data moved."""
        keys = None if futures is None else [f.key for f in collect_futures(futures)]
        msg = {"op": "rebalance", "keys": keys, "workers": as_list(workers)}
        return self.sync(_settled_request, self, msg, keys or [])

    def retire_workers(
        self: ClientShape,
        workers: str | Iterable[str] | None = None,
        names: Any = None,
        close_workers: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Retire workers (by address, or by ``names``) gracefully: the scheduler gives
        them no more tasks, moves their running tasks elsewhere, copies the data only
        they hold to other workers, then closes them (``close_workers=False`` only
        drops them from the scheduler; a conveyor worker whose scheduler connection
        closes shuts down by itself). With neither, the scheduler chooses idle workers
        holding the least data (``Scheduler.workers_to_close``), steered by the keywords
        ``n``, ``target``, ``memory_ratio`` and ``minimum``. Returns ``{address: info}``
        (as in ``scheduler_info()``) for each worker retired; a worker whose data has
        nowhere to go is not retired."""
        unknown = set(kwargs) - set(_CHOOSING)
        if unknown:
            raise TypeError(f"retire_workers() got unexpected keyword arguments {sorted(unknown)}")
        if kwargs and (workers is not None or names is not None):
            raise TypeError(f"{sorted(kwargs)} choose workers: give them without workers/names")
        for name, value in kwargs.items():
            if value is not None and not isinstance(value, _CHOOSING[name]):
                raise TypeError(f"retire_workers({name}=...) must be a number, not {value!r}")
        if names is not None and isinstance(names, (str, int)):
            names = [names]
        msg = {
            "op": "retire-workers",
            "workers": as_list(workers),
            "names": None if names is None else list(names),
            "close_workers": bool(close_workers),
            **{k: v for k, v in kwargs.items() if v is not None},
        }
        return self.sync(self._request, msg)

    def retry(self: ClientShape, futures: Any) -> Any:
        """Run the erred tasks of ``futures`` again (and the erred tasks they depend on);
        their futures become pending until the new outcome arrives."""
        return self.sync(_retry, self, collect_futures(futures))

    def restart(
        self: ClientShape, timeout: float | str | None = None, wait_for_workers: bool = True
    ) -> Any:
        """Forget every task on the cluster and start fresh workers.

        Every client's futures are cancelled, published datasets are dropped, and every
        worker is replaced: by its nanny (a new process), or for this client's
        LocalCluster by the cluster (new processes; with ``processes=False``, new
        in-process workers). Returns once the new workers registered, within
        ``timeout`` if given. If a worker has no nanny and is not this client's
        LocalCluster's, ValueError, and nothing is changed. ``wait_for_workers=False``
        is refused: the restart always waits for them.
        """
        if not wait_for_workers:
            raise ValueError("restart(wait_for_workers=False) is not supported: it waits")
        return self.sync(_restart, self, timeout=config.parse_duration(timeout))

    def shutdown(self: ClientShape) -> Any:
        """Close the scheduler and its workers, then this client: the client's
        LocalCluster is closed (workers, then scheduler); any other scheduler is told
        to close, and its workers shut down when it goes. Other clients lose the
        scheduler too."""
        if self.asynchronous:
            return _shutdown_then_close(self)
        self.sync(_shutdown, self)
        return self.close()  # a synchronous client also lets go of its event loop


async def _settled_request(client: ClientShape, msg: dict[str, Any], keys: list[Any]) -> None:
    """Wait for ``keys`` to finish (only results can be copied), then send ``msg``."""
    states = [client.futures[k] for k in keys if k in client.futures]
    for st in states:
        await st.wait()
    await client._request(msg)


async def _retry(client: ClientShape, futures: list[Any]) -> None:
    keys = []
    for fut in futures:
        st = fut._state
        if st.status == "error":
            st.lose()  # pending again: the scheduler reports the new outcome
            keys.append(fut.key)
    if keys:
        await client._request({"op": "retry", "keys": keys})


async def _restart(client: ClientShape) -> None:
    cluster = client.cluster
    if not isinstance(cluster, LocalCluster):
        await client._request({"op": "restart-workers"})  # forgets every task first
        return
    await client._request({"op": "restart"})
    restarted = cluster.restart_workers()
    if inspect.isawaitable(restarted):
        await restarted


async def _shutdown(client: ClientShape) -> None:
    """Close the client's LocalCluster (workers, then scheduler), or tell the scheduler
    to close."""
    cluster = client.cluster
    if isinstance(cluster, LocalCluster):
        if cluster.asynchronous:
            await cluster.close()
        else:  # it waits on this loop: from another thread
            await run_in_thread(cluster.close)
    else:
        with contextlib.suppress(CommClosedError, OSError):  # closed before its reply left
            await client._request({"op": "terminate"})


async def _shutdown_then_close(client: ClientShape) -> None:
    await _shutdown(client)
    await client.close()
