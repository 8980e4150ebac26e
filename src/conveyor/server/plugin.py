"""Scheduler plugins and extensions: code that runs inside the scheduler process.

A *plugin* (:class:`SchedulerPlugin`) is told when the scheduler starts and closes and when
workers and clients come and go. An *extension* is an object made once per scheduler with
``ext(scheduler)``; it adds request handlers to ``scheduler.handlers`` (coordination
primitives, published datasets, ...) and may be a plugin too.

Both are the operator's code (constructor arguments, preloads): the scheduler never
unpickles a plugin sent by a peer unless its operator allowed remote code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.server.scheduler import Scheduler


class SchedulerPlugin:
    """Base class of scheduler plugins: override the hooks you need.

    Hooks run on the scheduler's event loop and must not block it. ``start`` and
    ``close`` may be coroutines. An exception in a hook is logged; the scheduler goes on.
    """

    #: the plugin's name in ``scheduler.plugins`` (default: the class name)
    name: str | None = None

    def start(self, scheduler: Scheduler) -> Any:
        """The scheduler is listening (or the plugin was added to a running one)."""

    def close(self) -> Any:
        """The scheduler is closing (or the plugin was removed)."""

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        """A worker registered at ``worker``."""

    def remove_worker(self, scheduler: Scheduler, worker: str) -> None:
        """The worker at ``worker`` left or was removed."""

    def add_client(self, scheduler: Scheduler, client: str) -> None:
        """A client with id ``client`` connected."""

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        """The client with id ``client`` disconnected."""


def plugin_name(plugin: SchedulerPlugin) -> str:
    """The name a plugin is registered under."""
    return plugin.name or type(plugin).__name__
