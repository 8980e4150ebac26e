"""Progress of some keys and of every task they depend on, for ``conveyor.progress``.

A client registers keys (``progress-register``). The scheduler walks their dependencies
once, then and only then (the cost of the graph, once): every task not done yet is
watched, counted under its key prefix. While at least one tracker is registered a
scheduler plugin follows the transitions, with O(1) work per transition (a dict lookup,
and counters bumped per tracker watching that key); with none registered the plugin is
removed and transitions cost nothing (``state.transition_hook`` is None unless another
plugin listens).

A watched task is *done* when it reaches memory, when it errs (done, failed), and while
nothing will run it (done, *not run*): released at the end of an event (what is left of
a graph whose result failed, or whose futures were cancelled), or forgotten. A released
task that is wanted again (``released -> waiting``) counts as not done again.

The client polls (``progress-poll``) for the counts: ``{"id", "total", "done", "erred",
"not_run", "complete", "prefixes": [[prefix, total, done, erred], ...]}`` (``done``
includes the failed and the not-run tasks). A tracker is dropped when a poll reports it
complete, on ``progress-stop``, and when its client goes away.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any

from conveyor.core.transitions import prefix_and_group
from conveyor.server.plugin import SchedulerPlugin

if TYPE_CHECKING:
    from conveyor.core.records import TaskState
    from conveyor.rpc import Msg, Peer
    from conveyor.server.scheduler import Scheduler

__all__ = ["KeyProgress", "ProgressExtension", "ProgressPlugin"]


class KeyProgress:
    """One registration's counts: in all and per prefix ``[total, done, erred]``."""

    __slots__ = ("client", "done", "erred", "ident", "not_run", "prefixes", "total", "watched")

    def __init__(self, ident: int, client: str | None) -> None:
        self.ident = ident
        #: the client that registered it (its trackers go when it goes)
        self.client = client
        self.prefixes: dict[str, list[int]] = {}
        self.total = 0
        self.done = 0
        self.erred = 0
        self.not_run = 0
        #: the keys it watched at registration (to unwatch them when dropped)
        self.watched: list[Any] = []

    @property
    def complete(self) -> bool:
        """Whether every task counted is done."""
        return self.done >= self.total

    def add(self, prefix: str) -> list[int]:
        """Count one more task of ``prefix`` (not done); its prefix's row."""
        row = self.prefixes.get(prefix)
        if row is None:
            row = self.prefixes[prefix] = [0, 0, 0]
        row[0] += 1
        self.total += 1
        return row

    def finish(self, prefix: str, erred: bool) -> None:
        """One task of ``prefix`` is done (failed, if ``erred``)."""
        row = self.prefixes[prefix]
        row[1] += 1
        self.done += 1
        if erred:
            row[2] += 1
            self.erred += 1

    def park(self, prefix: str, by: int) -> None:
        """``by`` = 1: one task of ``prefix`` will not run (done); -1: it will after all."""
        self.prefixes[prefix][1] += by
        self.done += by
        self.not_run += by

    def report(self) -> dict[str, Any]:
        """The counts, as the client receives them."""
        return {
            "id": self.ident,
            "total": self.total,
            "done": self.done,
            "erred": self.erred,
            "not_run": self.not_run,
            "complete": self.complete,
            "prefixes": [[p, *row] for p, row in self.prefixes.items()],
        }


class _Watch:
    """A watched key: its prefix, the trackers waiting for it, and whether it is parked
    (released: counted as done, not run)."""

    __slots__ = ("parked", "prefix", "trackers")

    def __init__(self, prefix: str, tracker: KeyProgress) -> None:
        self.prefix = prefix
        self.trackers = [tracker]
        self.parked = False


class ProgressPlugin(SchedulerPlugin):
    """Feeds a :class:`ProgressExtension` the transitions (installed only while it has
    trackers) and the departure of clients."""

    name = "conveyor-progress"

    def __init__(self, extension: ProgressExtension) -> None:
        self.extension = extension

    def transition(self, key: Any, start: str, finish: str, *, stimulus_id: str) -> None:
        """Count a watched task's move (one dict lookup for any other)."""
        self.extension.moved(key, finish)

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        """Drop the trackers of a client that left."""
        self.extension.drop_client(client)


class ProgressExtension:
    """Answers ``progress-register`` (``keys``, ``complete``: also count the tasks done
    already), ``progress-poll`` (``id``) and ``progress-stop`` (``id``)."""

    name = "progress"

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        #: registered trackers by id
        self.trackers: dict[int, KeyProgress] = {}
        #: every watched key, with the trackers waiting for it
        self.watched: dict[Any, _Watch] = {}
        self.plugin = ProgressPlugin(self)
        self._ids = itertools.count(1)
        self._registering = 0
        self._removals: set[asyncio.Task[None]] = set()
        scheduler.handlers["progress-register"] = self.register
        scheduler.handlers["progress-poll"] = self.poll
        scheduler.handlers["progress-stop"] = self.stop

    # ---------------------------------------------------------------- handlers

    async def register(self, peer: Peer, msg: Msg) -> dict[str, Any]:
        """Count ``keys`` and the tasks they depend on; answer the first report (its
        ``id`` is None when everything is done already: there is nothing to poll)."""
        keys = list(msg.get("keys") or ())
        include_done = bool(msg.get("complete", True))
        client = peer.ident if peer.role == "client" else None
        tracker = KeyProgress(next(self._ids), client)
        self._registering += 1
        try:
            # the plugin listens before the walk: nothing finishes unseen in between
            await self._install()
            self._walk(tracker, keys, include_done)
        finally:
            self._registering -= 1
        if tracker.complete:
            self._unwatch(tracker)
            await self._uninstall_if_idle()
            report = tracker.report()
            report["id"] = None
            return report
        self.trackers[tracker.ident] = tracker
        return tracker.report()

    async def poll(self, peer: Peer, msg: Msg) -> dict[str, Any]:
        """The counts of tracker ``id``; a complete tracker is dropped once reported."""
        tracker = self.trackers.get(msg["id"])
        if tracker is None:
            raise KeyError(f"no progress tracker {msg['id']!r} (stopped, or its client left)")
        report = tracker.report()
        if tracker.complete:
            self._drop(tracker)
            await self._uninstall_if_idle()
        return report

    async def stop(self, peer: Peer, msg: Msg) -> None:
        """Drop tracker ``id`` (nothing if it is gone already)."""
        tracker = self.trackers.get(msg["id"])
        if tracker is not None:
            self._drop(tracker)
        await self._uninstall_if_idle()

    # ------------------------------------------------------------ bookkeeping

    def _walk(self, tracker: KeyProgress, keys: list[Any], include_done: bool) -> None:
        """Count the tasks of ``keys`` and, through the unfinished ones, their
        dependencies (each once); watch those not done. The given keys' prefixes are
        listed first."""
        tasks = self.scheduler.state.tasks
        seen: set[TaskState] = set()
        stack: list[TaskState] = []
        for key in keys:
            ts = tasks.get(key)
            if ts is None:  # forgotten already (cancelled): done, not run
                if include_done:
                    tracker.add(prefix_and_group(key)[0])
                    tracker.park(prefix_and_group(key)[0], 1)
            elif ts not in seen:
                seen.add(ts)
                self._visit(tracker, ts, include_done, stack)
        stack.reverse()  # depth first, in the order of the given keys
        while stack:
            ts = stack.pop()
            for dep in ts.dependencies:
                if dep not in seen:
                    seen.add(dep)
                    self._visit(tracker, dep, include_done, stack)

    def _visit(
        self, tracker: KeyProgress, ts: TaskState, include_done: bool, stack: list[TaskState]
    ) -> None:
        prefix = ts.group.prefix.name
        state = ts.state
        if state == "memory" or state == "erred":
            if include_done:
                tracker.add(prefix)
                tracker.finish(prefix, state == "erred")
            return  # what led to it is done too
        tracker.add(prefix)
        tracker.watched.append(ts.key)
        watch = self.watched.get(ts.key)
        if watch is None:
            watch = self.watched[ts.key] = _Watch(prefix, tracker)
            watch.parked = state == "released"  # between events: nothing will run it
        else:
            watch.trackers.append(tracker)
        if watch.parked:
            tracker.park(prefix, 1)
        stack.append(ts)

    def moved(self, key: Any, finish: str) -> None:
        """``key`` moved to state ``finish``: count it if it is watched."""
        watch = self.watched.get(key)
        if watch is None:
            return
        if finish == "released":
            if not watch.parked:
                watch.parked = True
                for tracker in watch.trackers:
                    tracker.park(watch.prefix, 1)
            return
        if finish == "forgotten" and watch.parked:
            del self.watched[key]  # counted already, as not run
            return
        if watch.parked:  # wanted again after all
            watch.parked = False
            for tracker in watch.trackers:
                tracker.park(watch.prefix, -1)
        if finish == "memory" or finish == "erred" or finish == "forgotten":
            del self.watched[key]
            if finish == "forgotten":
                for tracker in watch.trackers:
                    tracker.park(watch.prefix, 1)
            else:
                for tracker in watch.trackers:
                    tracker.finish(watch.prefix, finish == "erred")

    def restart(self, scheduler: Scheduler) -> None:
        """Every task was forgotten: what was not done never will be."""
        for key in list(self.watched):
            self.moved(key, "forgotten")

    def _unwatch(self, tracker: KeyProgress) -> None:
        """Stop watching keys for ``tracker`` (its size, once)."""
        watched = self.watched
        for key in tracker.watched:
            watch = watched.get(key)
            if watch is None:
                continue
            waiting = watch.trackers
            if tracker in waiting:
                waiting.remove(tracker)
            if not waiting:
                del watched[key]
        tracker.watched = []

    def _drop(self, tracker: KeyProgress) -> None:
        """Forget ``tracker``."""
        if self.trackers.pop(tracker.ident, None) is not None:
            self._unwatch(tracker)

    def drop_client(self, client: str) -> None:
        """Drop the trackers of ``client`` (it left); the plugin goes if none remain."""
        for tracker in [t for t in self.trackers.values() if t.client == client]:
            self._drop(tracker)
        if self._idle():
            task = asyncio.get_running_loop().create_task(self._uninstall_if_idle())
            self._removals.add(task)
            task.add_done_callback(self._removals.discard)

    # ------------------------------------------------------------- the plugin

    def _installed(self) -> bool:
        return self.scheduler.plugins.get(ProgressPlugin.name) is self.plugin

    def _idle(self) -> bool:
        return not self.trackers and not self._registering and self._installed()

    async def _install(self) -> None:
        if not self._installed():
            await self.scheduler.add_plugin(self.plugin, ProgressPlugin.name)

    async def _uninstall_if_idle(self) -> None:
        if self._idle():
            await self.scheduler.remove_plugin(ProgressPlugin.name)
