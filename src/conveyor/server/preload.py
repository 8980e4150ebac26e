"""Preloads: the operator's code run in a server process as it starts and as it closes.

``Scheduler(preload=...)``, ``Worker(preload=...)``, ``conveyor scheduler --preload X``
and ``conveyor worker --preload X`` name a module (``"mypackage.setup"``) or a Python
file (``"/path/setup.py"``). Once the server listens, its ``conveyor_setup(server)`` runs
(awaited if a coroutine); as it closes, ``conveyor_teardown(server)``. Either may be
missing. ``preload_argv`` passes command-line arguments: ``conveyor_setup`` is then a
``click`` command whose first parameter takes the server, and the arguments fill its
options (``--preload-argv`` on the command line, once per preload).

This is code the operator chose to run, like a plugin given to the constructor: no
peer can name a preload.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import click

__all__ = ["Preload", "make_preloads"]


class Preload:
    """One preload: its module, imported now, and the arguments for its setup."""

    def __init__(self, name: str, argv: Sequence[str] = ()) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.module = _load(name)
        setup = getattr(self.module, "conveyor_setup", None)
        if self.argv and not isinstance(setup, click.Command):
            raise ValueError(
                f"preload {name!r} was given arguments {self.argv}, but its conveyor_setup "
                "is not a click command that could take them"
            )

    async def setup(self, server: Any) -> None:
        """Run ``conveyor_setup(server)`` (with the preload's arguments)."""
        setup = getattr(self.module, "conveyor_setup", None)
        if setup is None:
            return
        if isinstance(setup, click.Command):
            context = setup.make_context("conveyor_setup", list(self.argv))
            assert setup.callback is not None
            result = setup.callback(server, **context.params)
        else:
            result = setup(server)
        if inspect.isawaitable(result):
            await result

    async def teardown(self, server: Any) -> None:
        """Run ``conveyor_teardown(server)``."""
        teardown = getattr(self.module, "conveyor_teardown", None)
        if teardown is not None:
            result = teardown(server)
            if inspect.isawaitable(result):
                await result

    def __repr__(self) -> str:
        return f"<Preload {self.name!r}>"


def make_preloads(
    preload: str | Sequence[str] | None, preload_argv: Sequence[Any] | None = None
) -> list[Preload]:
    """Preloads from the constructor's arguments: one name or several; ``preload_argv``
    one list of arguments for every preload, or a list of them per preload."""
    names = [preload] if isinstance(preload, str) else list(preload or ())
    argv: list[Any] = list(preload_argv or ())
    if argv and all(isinstance(a, (list, tuple)) for a in argv):
        if len(argv) != len(names):
            raise ValueError(
                f"preload_argv has {len(argv)} lists of arguments for {len(names)} preloads"
            )
        per = [list(a) for a in argv]
    elif any(isinstance(a, (list, tuple)) for a in argv):
        raise TypeError("preload_argv: a list of arguments, or a list of such lists")
    else:
        per = [argv for _ in names]
    return [Preload(name, args) for name, args in zip(names, per, strict=True)]


def _load(name: str) -> ModuleType:
    if name.endswith(".py") or os.sep in name:
        path = os.path.abspath(name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"preload file {name!r} does not exist")
        module_name = "conveyor_preload_" + os.path.basename(path)[:-3].replace("-", "_")
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load preload file {name!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(name)
