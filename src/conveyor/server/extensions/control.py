"""Cluster control and introspection requests: ``processing``, ``nbytes``, ``retry``,
``restart``, ``terminate``, versions, code run on the scheduler, and plugins registered
from clients.

Worker plugins (and uploaded files, which are worker plugins of their own kind) are kept
as the client sent them, opaque, and handed to every worker: to those connected when the
plugin is registered, and to each worker that registers later, before anything else is
sent to it, so that an uploaded module is importable by the first task it runs. Code for
the scheduler itself goes through :mod:`conveyor.server.remote_code`, which refuses it
unless the operator allowed remote code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from conveyor.core import events as se
from conveyor.rpc import Handler, Msg, Peer, ProtocolViolation
from conveyor.rpc.versions import versions
from conveyor.server import remote_code
from conveyor.server.plugin import SchedulerPlugin, overrides, plugin_name

if TYPE_CHECKING:
    from conveyor.server.scheduler import Scheduler

logger = logging.getLogger("conveyor.scheduler")

#: fields of a worker-plugin registration passed on to workers
_PLUGIN_FIELDS = ("name", "kind", "plugin", "filename", "data", "load")
_PLUGIN_KINDS = ("pickle", "upload")


class ControlExtension:
    """Scheduler side of the Client's control and introspection calls."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        #: worker plugins by name, as the ``plugin-add`` message that installs them
        self.worker_plugins: dict[str, Msg] = {}
        #: names of the scheduler plugins clients registered (only those they may remove)
        self.client_plugins: set[str] = set()
        self._terminating: asyncio.Task[None] | None = None
        scheduler.handlers.update(
            {
                "processing": self.processing,
                "nbytes": self.nbytes,
                "retry": self.retry,
                "restart": self.restart,
                "terminate": self.terminate,
                "versions": lambda p, m: versions(),
                "run-on-scheduler": lambda p, m: remote_code.run_function(scheduler, m),
                "register-scheduler-plugin": self.register_scheduler_plugin,
                "unregister-scheduler-plugin": self.unregister_scheduler_plugin,
                "register-worker-plugin": self.register_worker_plugin,
                "unregister-worker-plugin": self.unregister_worker_plugin,
            }
        )
        register = scheduler.handlers["register-worker"]
        scheduler.handlers["register-worker"] = self._before_registering(register)

    # ---------------------------------------------------------- introspection

    def processing(self, peer: Peer, msg: Msg) -> dict[str, list[Any]]:
        """Keys being run (or sent to run) on each worker."""
        workers = self.scheduler.state.workers
        wanted = msg.get("workers")
        addresses = workers if wanted is None else [a for a in wanted if a in workers]
        return {a: [ts.key for ts in workers[a].processing] for a in addresses}

    def nbytes(self, peer: Peer, msg: Msg) -> dict[Any, int]:
        """Bytes of each key in memory (or of ``keys``); with ``summary``, summed per
        key prefix."""
        tasks = self.scheduler.state.tasks
        keys = msg.get("keys")
        chosen = tasks.values() if keys is None else (tasks[k] for k in keys if k in tasks)
        known = [ts for ts in chosen if ts.nbytes >= 0]
        if not msg.get("summary"):
            return {ts.key: ts.nbytes for ts in known}
        out: dict[Any, int] = {}
        for ts in known:
            out[ts.prefix.name] = out.get(ts.prefix.name, 0) + ts.nbytes
        return out

    # ---------------------------------------------------------------- control

    def retry(self, peer: Peer, msg: Msg) -> None:
        """Run the erred tasks of ``keys`` again."""
        if peer.role != "client":
            raise ProtocolViolation("'retry' is only for a registered client")
        self.scheduler.apply(se.RetryKeys(time.time(), peer.ident, list(msg["keys"])))

    def restart(self, peer: Peer, msg: Msg) -> None:
        """Forget every task (clients' futures are cancelled) and every published
        dataset. Restarting the workers is the client's part (see Client.restart)."""
        self.scheduler.apply(se.ForgetAll(time.time(), "scheduler-restart"))
        # plugins' restart(scheduler) hook, and extensions that have one
        listeners: dict[int, Any] = {id(p): p for p in self.scheduler.plugins.values()}
        listeners.update((id(e), e) for e in self.scheduler.extensions.values())
        for obj in listeners.values():
            hook = getattr(obj, "restart", None)
            if obj is self or not callable(hook):
                continue
            if isinstance(obj, SchedulerPlugin) and not overrides(obj, "restart"):
                continue
            try:
                hook(self.scheduler)
            except Exception:
                logger.exception("The restart hook of %r failed", obj)

    def terminate(self, peer: Peer, msg: Msg) -> None:
        """Close the scheduler (its workers close when it goes) after this reply."""
        logger.info("Closing at the request of %r", peer)
        self._terminating = asyncio.get_running_loop().create_task(self.scheduler.close())

    # ------------------------------------------------------ scheduler plugins

    async def register_scheduler_plugin(self, peer: Peer, msg: Msg) -> None:
        """Unpickle and add a scheduler plugin (only if remote code is allowed)."""
        plugin = remote_code.load_plugin(self.scheduler, msg["plugin"])
        name = str(msg.get("name") or plugin_name(plugin))
        if name in self.scheduler.plugins and msg.get("idempotent"):
            return
        if name in self.scheduler.plugins and name not in self.client_plugins:
            raise ValueError(f"a scheduler plugin named {name!r} is the operator's")
        await self.scheduler.add_plugin(plugin, name)
        self.client_plugins.add(name)

    async def unregister_scheduler_plugin(self, peer: Peer, msg: Msg) -> None:
        """Remove a scheduler plugin that a client registered."""
        name = str(msg["name"])
        if name not in self.client_plugins:
            raise ValueError(f"no scheduler plugin named {name!r} was registered by a client")
        self.client_plugins.discard(name)
        await self.scheduler.remove_plugin(name)

    # --------------------------------------------------------- worker plugins

    async def register_worker_plugin(self, peer: Peer, msg: Msg) -> dict[str, Any]:
        """Keep a worker plugin and install it on every worker; ``{address: outcome}``."""
        name = str(msg["name"])
        if msg.get("kind") not in _PLUGIN_KINDS:
            raise ValueError(f"unknown kind of worker plugin {msg.get('kind')!r}")
        if name in self.worker_plugins and msg.get("idempotent"):
            return {}
        record: Msg = {"op": "plugin-add"}
        record.update((k, msg[k]) for k in _PLUGIN_FIELDS if k in msg)
        self.worker_plugins[name] = record
        return await self._broadcast(record)

    async def unregister_worker_plugin(self, peer: Peer, msg: Msg) -> dict[str, Any]:
        """Forget a worker plugin and tear it down on every worker."""
        name = str(msg["name"])
        if self.worker_plugins.pop(name, None) is None:
            raise ValueError(f"no worker plugin named {name!r} is registered")
        return await self._broadcast({"op": "plugin-remove", "name": name})

    async def _broadcast(self, msg: Msg) -> dict[str, Any]:
        comms = dict(self.scheduler.stream_comms)
        outcomes = await asyncio.gather(*(_ask(comm, dict(msg)) for comm in comms.values()))
        return dict(zip(comms, outcomes, strict=True))

    def _before_registering(self, register: Handler) -> Handler:
        """``register-worker``, installing the worker plugins first: the worker handles
        them before the tasks its registration may bring."""

        def handle(peer: Peer, msg: Msg) -> Any:
            for record in self.worker_plugins.values():
                peer.send(dict(record))
            return register(peer, msg)

        return handle


async def _ask(comm: Peer, msg: Msg) -> Any:
    try:
        return await comm.request(msg)
    except Exception as e:  # the worker left meanwhile
        text = f"{type(e).__name__}: {e}"
        return {"status": "error", "exception": None, "traceback": None, "text": text}
