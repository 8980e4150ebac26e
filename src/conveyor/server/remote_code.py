"""The one place the scheduler unpickles bytes from a peer: code that its operator
allowed clients to send.

A scheduler's control plane is msgpack and it passes user data through unopened, so a
client cannot make it run code. ``Client.run_on_scheduler`` and scheduler plugins
registered from a client need exactly that, and are refused unless the scheduler was
started with ``Scheduler(allow_remote_code=True)``, ``conveyor scheduler
--allow-remote-code`` or the configuration ``conveyor.scheduler.allow-remote-code: true``.
A LocalCluster enables it: its scheduler runs in its user's own process.

Every function here checks the switch itself before it opens anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.protocol import unpickle_bytes, unpickle_call
from conveyor.server.calls import accepts_keyword, call_packed, error_reply
from conveyor.server.plugin import SchedulerPlugin

if TYPE_CHECKING:
    from conveyor.server.scheduler import Scheduler

#: how to turn remote code on, for error messages
HOW_TO_ENABLE = (
    "start the scheduler with Scheduler(allow_remote_code=True), "
    "'conveyor scheduler --allow-remote-code', or the configuration "
    "conveyor.scheduler.allow-remote-code: true "
    "(environment: DASK_CONVEYOR__SCHEDULER__ALLOW_REMOTE_CODE=True)"
)


class RemoteCodeDisabled(PermissionError):
    """A client sent code to a scheduler that does not run code from clients."""


def require_enabled(scheduler: Scheduler, what: str) -> None:
    """Raise :class:`RemoteCodeDisabled` unless ``scheduler`` allows remote code."""
    if not scheduler.allow_remote_code:
        raise RemoteCodeDisabled(
            f"{what} sends code for the scheduler to run, and this scheduler does not "
            f"run code from clients; to allow it, {HOW_TO_ENABLE}"
        )


async def run_function(scheduler: Scheduler, msg: dict[str, Any]) -> dict[str, Any]:
    """Run the function of a ``run-on-scheduler`` request on the scheduler's event loop
    (with ``dask_scheduler=scheduler`` if it takes that keyword); pack the outcome."""
    require_enabled(scheduler, "run_on_scheduler")
    try:
        func, args, kwargs = unpickle_call(
            msg["function"], msg["args"], msg["kwargs"], "run_on_scheduler"
        )
    except Exception as e:
        return error_reply(e)
    if accepts_keyword(func, "dask_scheduler"):
        kwargs["dask_scheduler"] = scheduler
    return await call_packed(func, args, kwargs)


def load_plugin(scheduler: Scheduler, data: bytes) -> SchedulerPlugin:
    """The scheduler plugin pickled in ``data``."""
    require_enabled(scheduler, "registering a scheduler plugin from a client")
    plugin = unpickle_bytes(data)
    if not isinstance(plugin, SchedulerPlugin):
        raise TypeError(f"{type(plugin).__name__} is not a conveyor SchedulerPlugin")
    return plugin
