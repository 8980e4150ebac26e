"""Debugging failed work from the client: run a task here, with its real inputs.

``recreate_error_locally(future)`` asks the scheduler for the task that made ``future``
fail (its own, or the dependency that failed first), fetches the values of that task's
dependencies from the workers (the scheduler recomputes any it released), and runs it
in the calling thread: the exception is raised here, where a debugger can catch it.
``recreate_task_locally`` does the same for any task and returns its result. The
scheduler sends the run spec as the opaque bytes it holds; only this process unpickles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from conveyor.client.future import Future
from conveyor.protocol import FunctionStore, build_task

if TYPE_CHECKING:
    from conveyor.client.shape import ClientShape


class DebuggingMixin:
    """The Client's methods for running a remote task locally."""

    def recreate_error_locally(self: ClientShape, future: Future) -> Any:
        """Run the task that made ``future`` fail here, with the same inputs, so its
        exception is raised in this process (``pdb`` can then inspect it). Raises
        ValueError if ``future`` did not fail."""
        if not isinstance(future, Future):
            raise TypeError(f"recreate_error_locally takes a Future, not {type(future).__name__}")
        prepared = self.sync(_prepare, self, future, True)
        if self.asynchronous:
            return _run_later(prepared)
        task, deps = prepared
        return task(deps)

    def recreate_task_locally(self: ClientShape, future: Future) -> Any:
        """Run the task of ``future`` here, with its dependencies' values fetched from
        the cluster, and return what it returns."""
        if not isinstance(future, Future):
            raise TypeError(f"recreate_task_locally takes a Future, not {type(future).__name__}")
        prepared = self.sync(_prepare, self, future, False)
        if self.asynchronous:
            return _run_later(prepared)
        task, deps = prepared
        return task(deps)


async def _run_later(prepared: Any) -> Any:
    task, deps = await prepared
    return task(deps)


async def _prepare(
    client: ClientShape, future: Future, blame: bool
) -> tuple[Callable[[dict[Any, Any]], Any], dict[Any, Any]]:
    """The task to run (as a callable taking its dependencies' values) and those values."""
    if blame:
        await future._state.wait()
        if future._state.status != "error":
            raise ValueError(f"{future.key!r} did not fail (its status is {future.status})")
    info = await client._request({"op": "run-spec", "key": future.key, "blame": blame})
    if info is None:
        raise ValueError(f"the scheduler no longer knows {future.key!r}")
    if info["run_spec"] is None:
        raise ValueError(f"{info['key']!r} has no run spec: it was scattered, not computed")
    store = FunctionStore()
    for bid, data in (info["blobs"] or {}).items():
        store.add(bid, data)
    task = build_task(info["key"], (info["function"], info["run_spec"]), store)
    deps = [client._adopt_future(k) for k in info["dependencies"]]
    values = await client._gather(deps) if deps else []
    return task, dict(zip((f.key for f in deps), values, strict=True))
