"""The scheduler's side of nannies: which worker each runs, restarting workers through
them, and nanny plugins.

A worker run by a nanny names it when it registers. Nanny plugins are kept as the client
sent them, opaque (the scheduler never opens them), and handed to every nanny: to those
known when the plugin is registered, and to the nanny of each worker that registers
later (a nanny that has a plugin already, by name and bytes, ignores it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from conveyor import config
from conveyor.core import events as se
from conveyor.rpc import Handler, Msg, Peer, PeerPool
from conveyor.server.plugin import SchedulerPlugin

if TYPE_CHECKING:
    from conveyor.server.scheduler import Scheduler

logger = logging.getLogger("conveyor.scheduler")


class NannyExtension(SchedulerPlugin):
    """Keeps each worker's nanny, restarts workers through their nannies and hands
    nanny plugins to them."""

    name = "nannies"

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        #: the nanny of each worker that has one, by worker address
        self.nanny_of: dict[str, str] = {}
        #: nanny plugins by name, as the ``plugin-add`` message that installs them
        self.plugins: dict[str, Msg] = {}
        timeout = config.parse_duration(config.get("comm.timeouts.connect")) or 30.0
        self.pool = PeerPool(
            "scheduler",
            {},
            timeout,
            connection_args={
                **scheduler.security.get_connection_args("scheduler"),
                # nannies serve the cluster's own peers only (server/admission.py)
                "handshake_extra": {"token": scheduler.cluster_token},
            },
        )
        self._installing: set[asyncio.Future[None]] = set()
        scheduler.handlers.update(
            {
                "nannies": lambda p, m: self.nannies(),
                "restart-workers": self.restart_workers,
                "register-nanny-plugin": self.register_plugin,
                "unregister-nanny-plugin": self.unregister_plugin,
                "worker-died": self.worker_died,
            }
        )
        register = scheduler.handlers["register-worker"]
        scheduler.handlers["register-worker"] = self._registering(register)
        scheduler.plugins[self.name] = self

    def nannies(self) -> dict[str, str]:
        """The nanny of each connected worker that has one, by worker address."""
        workers = self.scheduler.state.workers
        for address in [a for a in self.nanny_of if a not in workers]:
            del self.nanny_of[address]
        return dict(self.nanny_of)

    def remove_worker(self, scheduler: Scheduler, worker: str) -> None:
        self.nanny_of.pop(worker, None)

    async def close(self) -> None:
        await self.pool.close()

    # -------------------------------------------------------------- deaths

    def worker_died(self, peer: Peer, msg: Msg) -> None:
        """A nanny's report on how its worker process ended and what it was running
        (see :mod:`conveyor.core.deaths`); about a worker that has no nanny, or whose
        verdict is settled already, it is ignored."""
        address = msg["worker"]
        cause = msg["cause"]
        executing = msg.get("executing")
        if not isinstance(address, str) or not isinstance(cause, str):
            raise TypeError("worker-died: 'worker' and 'cause' must be strings")
        if executing is not None and not isinstance(executing, (list, tuple)):
            raise TypeError("worker-died: 'executing' must be a list of keys or None")
        state = self.scheduler.state
        ws = state.workers.get(address)
        if not (ws is not None and ws.nanny) and address not in state.awaiting_verdict:
            return
        died = bool(msg.get("died", True))
        keys = None if executing is None else [_key(k) for k in executing]
        if died:
            running = "nothing" if keys == [] else "unknown tasks" if keys is None else keys
            logger.warning(
                "Worker %s died (%s) while running %s",
                address,
                cause,
                running,
                extra={"worker": address, "reason": cause, "running": running},
            )
        event = se.WorkerDied(time.time(), address, cause, keys, died)
        self.scheduler.remove_worker_with(event)

    # -------------------------------------------------------------- restart

    async def restart_workers(self, peer: Peer, msg: Msg) -> dict[str, Any]:
        """Restart every worker through its nanny (all or nothing: a worker without a
        nanny makes it fail before anything changed); ``{nanny: new worker address}``."""
        workers = list(self.scheduler.state.workers)
        nannies = self.nannies()
        orphans = [a for a in workers if a not in nannies]
        if orphans:
            raise ValueError(
                f"cannot restart workers without a nanny: {', '.join(sorted(orphans))} "
                "(started with --no-nanny, or in-process); restart them with whatever "
                "started them"
            )
        if msg.get("forget", True):
            control = self.scheduler.extensions.get("control")
            if control is not None:
                control.restart(peer, msg)
        addresses = sorted(set(nannies.values()))
        replies = await asyncio.gather(
            *(self._ask(a, {"op": "restart"}) for a in addresses), return_exceptions=True
        )
        out: dict[str, Any] = {}
        failed = []
        for address, reply in zip(addresses, replies, strict=True):
            if isinstance(reply, BaseException):
                failed.append(f"{address}: {type(reply).__name__}: {reply}")
            else:
                out[address] = reply.get("worker")
        if failed:
            raise RuntimeError("nannies failed to restart their workers: " + "; ".join(failed))
        return out

    # -------------------------------------------------------------- plugins

    async def register_plugin(self, peer: Peer, msg: Msg) -> dict[str, Any]:
        """Keep a nanny plugin and install it on every nanny; ``{nanny: outcome}``."""
        name = str(msg["name"])
        if name in self.plugins and msg.get("idempotent"):
            return {}
        record: Msg = {"op": "plugin-add", "name": name, "plugin": msg["plugin"]}
        self.plugins[name] = record
        return await self._broadcast(record)

    async def unregister_plugin(self, peer: Peer, msg: Msg) -> dict[str, Any]:
        """Forget a nanny plugin and tear it down on every nanny."""
        name = str(msg["name"])
        if self.plugins.pop(name, None) is None:
            raise ValueError(f"no nanny plugin named {name!r} is registered")
        return await self._broadcast({"op": "plugin-remove", "name": name})

    async def _broadcast(self, msg: Msg) -> dict[str, Any]:
        addresses = sorted(set(self.nannies().values()))
        replies = await asyncio.gather(*(self._ask_safely(a, dict(msg)) for a in addresses))
        return dict(zip(addresses, replies, strict=True))

    async def _ask(self, address: str, msg: Msg) -> Any:
        peer = await self.pool.get(address)
        return await peer.request(msg)

    async def _ask_safely(self, address: str, msg: Msg) -> Any:
        try:
            return await self._ask(address, msg)
        except Exception as e:  # the nanny left meanwhile
            text = f"{type(e).__name__}: {e}"
            return {"status": "error", "exception": None, "traceback": None, "text": text}

    def _registering(self, register: Handler) -> Handler:
        """``register-worker``, noting the worker's nanny and handing it the plugins."""

        def handle(peer: Peer, msg: Msg) -> Any:
            result = register(peer, msg)
            nanny = msg.get("nanny")
            if isinstance(nanny, str) and nanny:
                self.nanny_of[str(msg["address"])] = nanny
                for record in self.plugins.values():
                    task = asyncio.ensure_future(self._install_late(nanny, dict(record)))
                    self._installing.add(task)
                    task.add_done_callback(self._installing.discard)
            return result

        return handle

    async def _install_late(self, nanny: str, record: Msg) -> None:
        reply = await self._ask_safely(nanny, record)
        if reply.get("status") != "OK":
            logger.warning(
                "Nanny plugin %r failed on %s: %s", record["name"], nanny, reply.get("text")
            )


def _key(key: Any) -> Any:
    hash(key)  # TypeError: not a key (a map from the wire)
    return key
