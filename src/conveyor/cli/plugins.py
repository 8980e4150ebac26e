"""``--plugin MODULE:NAME`` for ``conveyor scheduler`` and ``conveyor worker``.

``NAME`` is an attribute of the importable module ``MODULE`` (``pkg.mod:Thing``;
``pkg.mod:holder.thing`` reaches deeper): a plugin instance, or a class or function that
makes one when called without arguments. A spec that does not resolve to a plugin of a
kind the command accepts is a usage error (exit status 2), raised before any server
listens.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import click

from conveyor.server.plugin import NannyPlugin, SchedulerPlugin, WorkerPlugin

__all__ = ["LoadedPlugin", "load_plugins", "plugin_option"]

#: the plugin base classes by kind
KINDS: dict[str, type] = {
    "scheduler": SchedulerPlugin,
    "worker": WorkerPlugin,
    "nanny": NannyPlugin,
}


def plugin_option(kinds: str) -> Callable[[Any], Any]:
    """The repeatable ``--plugin`` option; ``kinds`` names the accepted plugins in its help."""
    return click.option(
        "--plugin",
        "plugins",
        multiple=True,
        metavar="MODULE:NAME",
        show_default="none",
        help=f"A {kinds} to install: NAME in the importable module MODULE is one, or a "
        "class or function that makes one (repeat for more).",
    )


class LoadedPlugin:
    """A ``--plugin`` spec, resolved: its ``kind`` and how to get an instance."""

    def __init__(self, spec: str, kind: str, target: Any, first: Any) -> None:
        self.spec = spec
        #: "scheduler", "worker" or "nanny"
        self.kind = kind
        self._target = target
        self._first = first

    def make(self) -> Any:
        """A plugin instance: the attribute itself when it is one, else a new one made
        by calling it (the one made while checking the spec, the first time)."""
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if not callable(self._target) or isinstance(self._target, KINDS[self.kind]):
            return self._target
        made = self._target()
        if not isinstance(made, KINDS[self.kind]):
            raise TypeError(f"{self.spec} made {made!r}, not a {KINDS[self.kind].__name__}")
        return made


def load_plugins(
    specs: tuple[str, ...], accepted: tuple[str, ...], *, instantiate: bool = True
) -> list[LoadedPlugin]:
    """Resolve ``specs`` to plugins of the ``accepted`` kinds, or raise a usage error.

    A class is checked without being called when ``instantiate`` is false (the plugin is
    made in another process); a function is always called, to learn what it makes.
    """
    return [_load(spec, accepted, instantiate) for spec in specs]


def _bad(message: str) -> click.BadParameter:
    return click.BadParameter(message, param_hint="'--plugin'")


def _load(spec: str, accepted: tuple[str, ...], instantiate: bool) -> LoadedPlugin:
    module_name, colon, name = spec.partition(":")
    module_name, name = module_name.strip(), name.strip()
    if not colon or not module_name or not name:
        raise _bad(f"{spec!r} is not MODULE:NAME (a module to import, a colon, a name in it)")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing == module_name or module_name.startswith(f"{missing}."):  # not an import
            raise _bad(f"no module named {module_name!r} (in {spec!r})") from None
        raise _bad(f"importing {module_name!r} failed: {type(e).__name__}: {e}") from None
    except Exception as e:
        raise _bad(f"importing {module_name!r} failed: {type(e).__name__}: {e}") from None
    for part in name.split("."):
        if not hasattr(target, part):
            raise _bad(f"module {module_name!r} has no attribute {name!r} (in {spec!r})")
        target = getattr(target, part)
    wanted = " or ".join(KINDS[k].__name__ for k in accepted)
    first: Any = None
    if isinstance(target, type):
        kind = _kind_of_class(target, accepted)
        if kind is None:
            raise _bad(f"{spec} is the class {target.__name__}, not a {wanted} subclass")
        if instantiate:
            first = _call(spec, target)
    else:
        kind = _kind_of(target, accepted)
        if kind is None:
            if not callable(target):
                raise _bad(f"{spec} is {_describe(target)}, not a {wanted}")
            first = _call(spec, target)
            kind = _kind_of(first, accepted)
            if kind is None:
                raise _bad(f"{spec}() made {_describe(first)}, not a {wanted}")
    return LoadedPlugin(spec, kind, target, first)


def _kind_of_class(cls: type, accepted: tuple[str, ...]) -> str | None:
    return next((k for k in accepted if issubclass(cls, KINDS[k])), None)


def _kind_of(obj: object, accepted: tuple[str, ...]) -> str | None:
    return next((k for k in accepted if isinstance(obj, KINDS[k])), None)


def _call(spec: str, target: Any) -> Any:
    try:
        return target()
    except Exception as e:
        raise _bad(f"calling {spec}() failed: {type(e).__name__}: {e}") from None


def _describe(obj: object) -> str:
    text = repr(obj)
    return text if len(text) <= 60 else f"a {type(obj).__name__}"
