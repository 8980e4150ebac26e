"""Scheduler plugins and extensions: code that runs inside the scheduler process.

A *plugin* (:class:`SchedulerPlugin`) is told when the scheduler starts and closes and when
workers and clients come and go. An *extension* is an object made once per scheduler with
``ext(scheduler)``; it adds request handlers to ``scheduler.handlers`` (coordination
primitives, published datasets, ...) and may be a plugin too.

Both are the operator's code (constructor arguments, preloads): the scheduler never
unpickles a plugin sent by a peer unless its operator allowed remote code
(:mod:`conveyor.server.remote_code`). A :class:`WorkerPlugin` runs on workers: clients
register it, the scheduler keeps its pickle unopened and hands it to every worker. A
:class:`NannyPlugin` runs the same way in every nanny (the process that keeps a worker
process running).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.core.records import WorkerInfo
    from conveyor.server.nanny import Nanny
    from conveyor.server.scheduler import Scheduler
    from conveyor.server.worker import Worker


class SchedulerPlugin:
    """Base class of scheduler plugins: override the hooks you need.

    Hooks run on the scheduler's event loop and must not block it. ``start`` and
    ``close`` may be coroutines. An exception in a hook is logged; the scheduler goes on.
    """

    #: the plugin's name in ``scheduler.plugins`` (default: the class name)
    name: str | None = None

    def start(self, scheduler: Scheduler) -> Any:
        """The scheduler is listening (or the plugin was added to a running one)."""

    def before_close(self) -> Any:
        """The scheduler starts closing: everything is still up."""

    def close(self) -> Any:
        """The scheduler is closing (or the plugin was removed)."""

    def update_graph(
        self, scheduler: Scheduler, *, client: str, keys: list[Any], tasks: list[Any]
    ) -> None:
        """Client ``client`` submitted ``tasks`` (their keys), of which it wants ``keys``."""

    def restart(self, scheduler: Scheduler) -> None:
        """Every task was forgotten (``Client.restart``)."""

    def transition(self, key: Any, start: str, finish: str, *, stimulus_id: str) -> None:
        """Task ``key`` moved from state ``start`` to ``finish``.

        Called for every transition while the event that caused it is being handled:
        keep it cheap. When no plugin overrides this hook, transitions cost nothing
        extra.
        """

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        """A worker registered at ``worker``."""

    def remove_worker(self, scheduler: Scheduler, worker: str) -> None:
        """The worker at ``worker`` left or was removed."""

    def add_client(self, scheduler: Scheduler, client: str) -> None:
        """A client with id ``client`` connected."""

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        """The client with id ``client`` disconnected."""

    def log_event(self, topic: str, msg: Any) -> None:
        """``msg`` was logged under ``topic`` (``Client.log_event``)."""

    def valid_workers_downscaling(
        self, scheduler: Scheduler, workers: list[WorkerInfo]
    ) -> list[WorkerInfo]:
        """Of ``workers``, those this plugin allows to close when the cluster scales
        down (``workers_to_close``, ``retire_workers()`` without names); all by default."""
        return workers


def overrides(plugin: object, hook: str, base: type = SchedulerPlugin) -> bool:
    """Whether ``plugin`` implements ``hook`` itself, rather than inheriting the no-op of
    ``base`` or lacking it (calling it then would do nothing)."""
    method = getattr(type(plugin), hook, None)
    return method is not None and method is not getattr(base, hook, None)


class WorkerPlugin:
    """Base class of worker plugins: override the hooks you need.

    ``Client.register_plugin(plugin)`` pickles the plugin and the scheduler keeps the
    bytes (it never opens them); every worker, including those that join later,
    unpickles its own copy and calls ``setup(worker=...)`` before it runs another task.
    ``teardown(worker=...)`` runs when the plugin is unregistered or replaced, and when
    the worker closes. Hooks run on the worker's event loop and may be coroutines; an
    exception in ``setup`` is raised by ``register_plugin``.
    """

    #: the plugin's name (default: the class name and a unique suffix)
    name: str | None = None

    def setup(self, worker: Worker) -> Any:
        """The plugin arrived on ``worker``."""

    def teardown(self, worker: Worker) -> Any:
        """The plugin is leaving ``worker`` (unregistered, replaced, or the worker closes)."""

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        """Task ``key`` moved from state ``start`` to ``finish`` on this worker.

        Called for every state change of every task on the worker (``released``,
        ``waiting``, ``ready``, ``executing``, ``long-running``, ``memory``, ``error``,
        ``fetch``, ``flight``, ``missing``, ``cancelled``, ``forgotten``), after the change
        and its bookkeeping, while the worker handles the event that caused it: keep it
        cheap and synchronous (it may not be a coroutine). Keywords:

        * ``timestamp``: when the worker handled that event (seconds since the epoch;
          the time ``Worker.state.story(key)`` logs).

        Accept ``**kwargs``: later versions may pass more. An exception is logged (with
        its traceback, once per plugin) and the worker goes on. When no plugin overrides
        this hook, transitions cost nothing extra.
        """


def plugin_name(plugin: SchedulerPlugin) -> str:
    """The name a plugin is registered under."""
    return plugin.name or type(plugin).__name__


class NannyPlugin:
    """Base class of nanny plugins: override the hooks you need.

    ``Client.register_plugin(plugin)`` pickles the plugin; the scheduler keeps the bytes
    unopened and hands them to every nanny, including those that join later. Each nanny
    unpickles its own copy and calls ``setup(nanny=...)``; with ``restart = True`` it
    then restarts its worker process, so that what ``setup`` changed (environment
    variables, files) is in place before the new worker starts. ``teardown(nanny=...)``
    runs when the plugin is unregistered or replaced, and when the nanny closes. Hooks
    run on the nanny's event loop and may be coroutines; an exception in ``setup`` is
    raised by ``register_plugin``.
    """

    #: the plugin's name (default: the class name and a unique suffix)
    name: str | None = None
    #: restart the worker process after ``setup``
    restart: bool = False

    def setup(self, nanny: Nanny) -> Any:
        """The plugin arrived on ``nanny``."""

    def teardown(self, nanny: Nanny) -> Any:
        """The plugin is leaving ``nanny`` (unregistered, replaced, or the nanny closes)."""
