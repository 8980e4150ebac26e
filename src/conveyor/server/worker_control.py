"""A worker's side of the Client's control calls: ``Client.run``, worker plugins,
uploaded files and versions.

``run`` requests come straight from clients: the function is unpickled here and called
on the worker's event loop, as distributed does (it may then look at the worker safely;
it blocks the loop while it runs), with ``dask_worker=worker`` if it takes that keyword;
a coroutine function is awaited. Plugins come from the scheduler, which keeps them for
workers that join later: a pickled :class:`~conveyor.server.plugin.WorkerPlugin`, or a
file to upload (:class:`UploadFile`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from typing import TYPE_CHECKING, Any

from conveyor.protocol import unpickle_bytes, unpickle_call
from conveyor.rpc import Msg, Peer
from conveyor.rpc.versions import versions
from conveyor.server.calls import accepts_keyword, call_packed, error_reply
from conveyor.server.plugin import WorkerPlugin, overrides
from conveyor.server.plugin_host import PluginHost

if TYPE_CHECKING:
    from conveyor.server.worker import Worker

logger = logging.getLogger("conveyor.worker")

#: file types an upload makes importable
IMPORTABLE = (".py", ".egg", ".zip", ".pyz", ".whl")


class UploadFile(WorkerPlugin):
    """A file a client uploaded (``Client.upload_file``): written to the worker's upload
    directory, which is on ``sys.path``; an archive goes on ``sys.path`` itself. With
    ``load``, a module is imported (reloaded if it was imported before), and so are the
    top-level modules of an archive."""

    def __init__(self, filename: str, data: bytes, load: bool = True) -> None:
        self.filename = os.path.basename(filename)
        if not self.filename or self.filename in (".", ".."):
            raise ValueError(f"not a file name: {filename!r}")
        self.data = data
        self.load = load
        self.name = f"upload-file-{self.filename}"

    def setup(self, worker: Worker) -> None:
        """Write the file and make it importable (and import it, with ``load``)."""
        path = os.path.join(worker.control.upload_directory(), self.filename)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(self.data)
        os.replace(tmp, path)
        stem, ext = os.path.splitext(self.filename)
        archive = ext in (".egg", ".zip", ".pyz", ".whl")
        if archive:
            worker.control.add_to_path(path)
        importlib.invalidate_caches()
        if not self.load or ext not in IMPORTABLE:
            return
        names = _top_level_modules(path) if archive else [stem]
        for name in names:
            module = sys.modules.get(name)
            if module is not None:
                importlib.reload(module)
            else:
                importlib.import_module(name)


def _top_level_modules(path: str) -> list[str]:
    """The modules and packages at the top of a zip archive."""
    names = set()
    with zipfile.ZipFile(path) as archive:
        for entry in archive.namelist():
            head, _, rest = entry.partition("/")
            if rest and head.isidentifier() and rest.startswith("__init__.py"):
                names.add(head)
            elif not rest and head.endswith(".py") and head[:-3].isidentifier():
                names.add(head[:-3])
    return sorted(names)


async def run_call(msg: Msg, host: object) -> dict[str, Any]:
    """Run the function of a ``Client.run`` message here; a function taking
    ``dask_worker`` gets ``host`` (the Worker, or the Nanny for ``nanny=True``)."""
    try:
        func, args, kwargs = unpickle_call(msg["function"], msg["args"], msg["kwargs"], "run")
    except Exception as e:
        return error_reply(e)
    if accepts_keyword(func, "dask_worker"):
        kwargs["dask_worker"] = host
    outcome = await call_packed(func, args, kwargs)
    if outcome["status"] != "OK" and msg.get("reply") is None:  # nobody waits for it
        logger.warning("Client.run(%r, wait=False) failed: %s", func, outcome["text"])
    return outcome


class WorkerControl:
    """Made by each Worker: adds its handlers and keeps its plugins."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._plugins = PluginHost(worker, "worker")
        #: installed plugins by name
        self.plugins: dict[str, Any] = self._plugins.plugins
        self._directory: str | None = None
        self._paths: list[str] = []
        #: the plugins that implement ``transition``, by name: only while there are any
        #: does the state machine call back on every transition
        self._transition_listeners: list[tuple[str, Any]] = []
        #: plugins whose ``transition`` raised (logged once each)
        self._failed_transition: set[str] = set()
        worker._handlers.update({"run": self._run, "versions": lambda p, m: versions()})
        worker._scheduler_handlers.update(
            {"plugin-add": self._plugin_add, "plugin-remove": self._plugin_remove}
        )

    # ------------------------------------------------------------------ run

    async def _run(self, peer: Peer, msg: Msg) -> dict[str, Any]:
        return await run_call(msg, self.worker)

    # -------------------------------------------------------------- plugins

    def _plugin_add(self, peer: Peer, msg: Msg) -> Any:
        # Synchronous setups run inside this call, before the worker handles the next
        # message: a task that arrives with the plugin finds an uploaded file in place.
        name = str(msg["name"])
        try:
            if msg.get("kind") == "upload":
                plugin: Any = UploadFile(msg["filename"], msg["data"], bool(msg.get("load")))
            else:
                plugin = unpickle_bytes(msg["plugin"])
        except Exception as e:
            logger.exception("Could not load worker plugin %r", name)
            return error_reply(e)
        outcome = self._plugins.add(name, plugin)
        self._failed_transition.discard(name)  # a new plugin: its first failure is logged
        self.plugins_changed()
        return outcome

    def _plugin_remove(self, peer: Peer, msg: Msg) -> Any:
        outcome = self._plugins.remove(str(msg["name"]))
        self.plugins_changed()
        return outcome

    async def install(self, plugin: WorkerPlugin) -> None:
        """Set up a plugin given to the Worker itself; what its ``setup`` raises
        propagates (the worker does not start)."""
        await self._plugins.install(plugin)
        self.plugins_changed()

    def plugins_changed(self) -> None:
        """Transitions reach plugins only while one listens: otherwise they cost nothing."""
        self._transition_listeners = [
            (name, plugin)
            for name, plugin in self.plugins.items()
            if overrides(plugin, "transition", WorkerPlugin)
        ]
        state = self.worker.state
        if state is not None:
            state.transition_hook = self._on_transition if self._transition_listeners else None

    def _on_transition(self, key: Any, start: str, finish: str, now: float) -> None:
        for name, plugin in self._transition_listeners:
            try:
                plugin.transition(key, start, finish, timestamp=now)
            except Exception:
                if name not in self._failed_transition:  # not once per task
                    self._failed_transition.add(name)
                    logger.exception(
                        "Worker plugin %r failed in transition (%r: %s -> %s); further "
                        "failures of its transition hook are not logged",
                        name,
                        key,
                        start,
                        finish,
                    )

    # ------------------------------------------------------------- uploads

    def upload_directory(self) -> str:
        """This worker's own directory for uploaded files, on ``sys.path``."""
        if self._directory is None:
            self._directory = tempfile.mkdtemp(
                prefix="conveyor-uploads-", dir=self.worker.local_directory
            )
            self.add_to_path(self._directory)
        return self._directory

    def add_to_path(self, path: str) -> None:
        """Put ``path`` first on ``sys.path`` (taken off again when the worker closes)."""
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
        if path not in self._paths:
            self._paths.append(path)

    async def close(self) -> None:
        """Tear the plugins down, then take the uploads off ``sys.path`` and disk."""
        await self._plugins.close()
        self.plugins_changed()
        for path in self._paths:
            with contextlib.suppress(ValueError):
                sys.path.remove(path)
        self._paths.clear()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
