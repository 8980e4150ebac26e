"""Actors on a worker: objects that stay where they were made and run their methods there.

``client.submit(Cls, ..., actor=True)`` runs ``Cls(...)`` as a task; the instance stays
in this worker's memory, wrapped in :class:`ActorInstance` so that it is never copied
(a transfer of it fails with a clear error instead). Clients call its methods and read
its attributes through requests handled here. Calls run one at a time, in order, on a
thread of their own (coroutine methods run on the event loop), with the task context
set, so ``get_worker()`` and ``get_client()`` work inside them.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from conveyor.protocol import dumps, loads, pack_exception
from conveyor.rpc import Msg, Peer
from conveyor.rpc.actor_instance import ActorInstance
from conveyor.rpc.context import TaskContext, set_current_task

if TYPE_CHECKING:
    from conveyor.server.worker import Worker


class ActorHost:
    """Serves the method calls and attribute reads of the actors a worker holds."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._executor: ThreadPoolExecutor | None = None

    def handlers(self) -> dict[str, Any]:
        return {"actor-call": self.call, "actor-attribute": self.attribute}

    def _instance(self, key: Any) -> Any:
        held = self.worker.data.get(key)
        if not isinstance(held, ActorInstance):
            raise KeyError(f"no actor {key!r} on {self.worker.address}")
        return held.obj

    async def call(self, peer: Peer, msg: Msg) -> dict[str, Any]:
        """Run ``method(*args, **kwargs)`` of actor ``key``; the result or the
        exception comes back pickled."""
        key = msg["key"]
        method = getattr(self._instance(key), str(msg["method"]))
        call: Any = loads(msg["args"])
        args, kwargs = call
        try:
            if inspect.iscoroutinefunction(method):
                result = await method(*args, **kwargs)
            else:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(1, thread_name_prefix="conveyor-actor")
                run = functools.partial(self._in_context, key, method, args, kwargs)
                result = await asyncio.get_running_loop().run_in_executor(self._executor, run)
        except Exception as e:
            exc, tb = pack_exception(e, e.__traceback__)
            return {"exception": exc, "traceback": tb}
        return {"result": dumps(result)}

    def _in_context(self, key: Any, method: Any, args: Any, kwargs: Any) -> Any:
        set_current_task(TaskContext(self.worker, key))
        try:
            return method(*args, **kwargs)
        finally:
            set_current_task(None)

    def attribute(self, peer: Peer, msg: Msg) -> dict[str, Any]:
        """The value of attribute ``name`` of actor ``key``, pickled."""
        return {"result": dumps(getattr(self._instance(msg["key"]), str(msg["name"])))}

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
