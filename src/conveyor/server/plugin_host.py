"""Plugins installed on a worker or a nanny: each has a name, ``setup`` when it arrives,
``teardown`` when it is replaced, removed or its host closes.

Hooks are called with the host as a keyword (``worker=`` or ``nanny=``) and may be
coroutines. Every call answers with an outcome for the reply (``{"status": "OK"}`` or an
error reply carrying what the hook raised), or an awaitable of one when a hook is a
coroutine: a synchronous ``setup`` runs before the host handles its next message.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Awaitable
from typing import Any

from conveyor.server.calls import error_reply

__all__ = ["PluginHost"]

logger = logging.getLogger("conveyor.plugins")

_OK = {"status": "OK"}


class PluginHost:
    """The plugins of one ``host``, passed to their hooks as the keyword ``role``."""

    def __init__(self, host: object, role: str) -> None:
        self.host = host
        self.role = role
        #: installed plugins by name
        self.plugins: dict[str, Any] = {}

    def add(self, name: str, plugin: Any) -> Any:
        """Install ``plugin`` as ``name``: the old one of that name is torn down first."""
        old = self.plugins.pop(name, None)
        self.plugins[name] = plugin
        if old is None:
            return self.hook(name, plugin, "setup")
        torn_down = self.hook(name, old, "teardown")
        if not inspect.isawaitable(torn_down):
            return self.hook(name, plugin, "setup")

        async def then_setup() -> Any:
            await torn_down
            outcome = self.hook(name, plugin, "setup")
            return await outcome if inspect.isawaitable(outcome) else outcome

        return then_setup()

    async def install(self, plugin: Any) -> str:
        """Install a plugin given to the host's constructor under its ``name`` (default:
        the class name and a unique suffix); what its ``setup`` raises propagates, and
        the plugin is then not installed. Returns the name."""
        name = getattr(plugin, "name", None) or f"{type(plugin).__name__}-{uuid.uuid4()}"
        old = self.plugins.pop(name, None)
        if old is not None:
            outcome = self.hook(name, old, "teardown")
            if inspect.isawaitable(outcome):
                await outcome
        self.plugins[name] = plugin
        try:
            result = plugin.setup(**{self.role: self.host})
            if inspect.isawaitable(result):
                await result
        except BaseException:
            self.plugins.pop(name, None)
            raise
        return name

    def remove(self, name: str) -> Any:
        """Tear ``name`` down and forget it (a no-op if there is none)."""
        plugin = self.plugins.pop(name, None)
        return dict(_OK) if plugin is None else self.hook(name, plugin, "teardown")

    def hook(self, name: str, plugin: Any, hook: str) -> Any:
        """Call ``plugin.<hook>(<role>=host)``: its outcome, or an awaitable of it."""
        method = getattr(plugin, hook, None)
        if method is None:
            return dict(_OK)
        try:
            result = method(**{self.role: self.host})
        except Exception as e:
            logger.exception("%s plugin %r failed in %s", self.role.capitalize(), name, hook)
            return error_reply(e)
        if inspect.isawaitable(result):
            return self._await_hook(name, hook, result)
        return dict(_OK)

    async def _await_hook(self, name: str, hook: str, result: Awaitable[Any]) -> dict[str, Any]:
        try:
            await result
        except Exception as e:
            logger.exception("%s plugin %r failed in %s", self.role.capitalize(), name, hook)
            return error_reply(e)
        return dict(_OK)

    async def close(self) -> None:
        """Tear every plugin down, the last installed first."""
        for name, plugin in reversed(list(self.plugins.items())):
            outcome = self.hook(name, plugin, "teardown")
            if inspect.isawaitable(outcome):
                await outcome
        self.plugins.clear()
