"""Task options: where and when tasks may run, from keywords and from ``dask.annotate``.

Five options reach the scheduler: ``workers`` (names or addresses the task is restricted
to), ``allow_other_workers`` (it may run elsewhere when none of them can run it),
``retries`` (times it is rerun after an error), ``resources`` (amounts it needs free on
its worker, ``{"GPU": 1}``) and ``priority`` (higher runs first). They come from

* the keywords of ``submit``, ``map``, ``get``, ``compute`` and ``persist`` (the call's
  options, for every task of the call),
* the annotations in force where the call is made (``with dask.annotate(...):``), under
  the call's keywords,
* per-task annotations of a graph (``dask.annotate`` around the code building a
  collection, carried by its layers), over both.

They travel in *wire form*: a dict holding only the options that are set, validated here
(:func:`task_options`), so a bad value fails the call with a clear error before anything
is sent, and a task without options costs nothing extra. Nothing here ever reaches the
user's function.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dask.base import get_annotations

from conveyor import config

Msg = dict[str, Any]

#: the annotations and keywords that are task options
OPTION_NAMES = frozenset({"workers", "allow_other_workers", "retries", "resources", "priority"})
_MISSING = object()


def task_options(
    *,
    workers: Any = None,
    allow_other_workers: Any = None,
    retries: Any = None,
    resources: Any = None,
    priority: Any = None,
) -> Msg:
    """The wire form of task options: only those set (None, False, 0 and empty values
    are not), validated. TypeError or ValueError names the bad option.

    ``workers``: a worker name or address, or an iterable of them. ``allow_other_workers``:
    a bool. ``retries``: an integer >= 0. ``resources``: a mapping of resource names to
    amounts >= 0. ``priority``: a real number; higher runs first.
    """
    out: Msg = {}
    if workers is not None:
        names = _workers(workers)
        if names:
            out["workers"] = names
    if allow_other_workers is not None:
        if not isinstance(allow_other_workers, bool):
            raise TypeError(
                f"allow_other_workers= must be True, False or None, not {allow_other_workers!r}"
            )
        if allow_other_workers:
            out["allow_other_workers"] = True
    if retries is not None:
        if isinstance(retries, bool) or not isinstance(retries, numbers.Integral):
            raise TypeError(f"retries= must be an integer, not {retries!r}")
        if retries < 0:
            raise ValueError(f"retries= must be >= 0, not {retries!r}")
        if retries:
            out["retries"] = int(retries)
    if resources is not None:
        amounts = _resources(resources)
        if amounts:
            out["resources"] = amounts
    if priority is not None:
        value = _priority(priority)
        if value:
            out["priority"] = value
    return out


def call_options(key: Any = _MISSING, **keywords: Any) -> Msg:
    """The options of one ``submit`` or ``map`` call, in wire form: the annotations in
    force (``dask.annotate``) overridden by the keywords given (``keywords``: those of
    :func:`task_options`).

    ``key``: the task's key, for annotations given as functions of the key; without it
    (``map``) such an annotation is refused. ``allow_other_workers`` without ``workers``
    is refused, as distributed does.
    """
    out: Msg = {}
    for name, value in get_annotations().items():
        if name in OPTION_NAMES:
            if callable(value):
                if key is _MISSING:
                    raise TypeError(
                        f"the annotation {name}= is a function of the task's key, which map "
                        "cannot apply to its tasks; pass the option to map itself"
                    )
                value = value(key)
            apply_option(out, name, value)
    out.update(task_options(**keywords))
    if out.get("allow_other_workers") and "workers" not in out:
        raise ValueError("allow_other_workers=True needs workers= (the workers to prefer)")
    return out


def apply_option(opts: Msg, name: str, value: Any) -> None:
    """Set option ``name`` to ``value`` in wire-form ``opts``, overriding what it held:
    a value that sets nothing (``retries=0``) removes the entry; ``priority=0`` stays,
    to override a call's priority."""
    wire = task_options(**{name: value})
    if name in wire:
        opts[name] = wire[name]
    elif name == "priority":
        opts["priority"] = 0
    else:
        opts.pop(name, None)
        if name == "workers":
            opts.pop("allow_other_workers", None)


def check_fifo_timeout(value: Any) -> None:
    """Validate ``fifo_timeout=`` (a duration). Accepted for distributed compatibility;
    it has no effect: conveyor has no batching window, and every call starts a new
    generation, so among tasks of equal user priority earlier calls' tasks run first
    (distributed's behaviour with ``fifo_timeout=0``)."""
    config.parse_duration(value)


class GraphOptions:
    """The options of each task of a graph: its own annotations over the call's
    options (already in wire form, keywords over the annotations in force).

    ``of(key)`` is O(1) for tasks without annotations of their own: they share one dict.
    Annotation values are validated once per distinct value object.
    """

    __slots__ = ("_by_key", "_dynamic", "_valid", "base")

    def __init__(self, call: Msg, by_key: Mapping[str, Mapping[Any, Any]]) -> None:
        base: Msg = {}
        dynamic: dict[str, Callable[[Any], Any]] = {}
        for name, value in get_annotations().items():
            if name not in OPTION_NAMES:
                continue
            if callable(value):
                dynamic[name] = value
            else:
                apply_option(base, name, value)
        for name in call:
            dynamic.pop(name, None)
        base.update(call)
        #: the options of a task without annotations of its own
        self.base = base
        self._dynamic = dynamic
        self._by_key = {n: m for n, m in by_key.items() if n in OPTION_NAMES and m}
        #: (name, id(value)) -> (value, wire form); the value is kept so its id stays its own
        self._valid: dict[tuple[str, int], tuple[Any, Msg]] = {}

    def of(self, key: Any) -> Msg:
        """The wire-form options of task ``key`` (the shared ``base`` if none of its own);
        TypeError or ValueError names the task whose annotation is bad."""
        if not self._by_key and not self._dynamic:
            return self.base
        opts: Msg | None = None
        try:
            for name, fn in self._dynamic.items():
                opts = dict(self.base) if opts is None else opts
                apply_option(opts, name, fn(key))
            for name, values in self._by_key.items():
                value = values.get(key, _MISSING)
                if value is _MISSING or value is None:
                    continue
                opts = dict(self.base) if opts is None else opts
                self._apply_cached(opts, name, value)
        except (TypeError, ValueError) as e:
            raise type(e)(f"task {key!r}: {e}") from None
        return self.base if opts is None else opts

    def _apply_cached(self, opts: Msg, name: str, value: Any) -> None:
        entry = self._valid.get((name, id(value)))
        if entry is None or entry[0] is not value:
            wire: Msg = {}
            apply_option(wire, name, value)
            entry = self._valid[(name, id(value))] = (value, wire)
        wire = entry[1]
        if name in wire:
            opts[name] = wire[name]
        else:
            opts.pop(name, None)
            if name == "workers":
                opts.pop("allow_other_workers", None)


def _workers(workers: Any) -> list[Any]:
    if isinstance(workers, (str, int)) and not isinstance(workers, bool):
        return [workers]
    if isinstance(workers, Iterable) and not isinstance(workers, (bytes, Mapping)):
        names = list(workers)
        for name in names:
            if not isinstance(name, (str, int)) or isinstance(name, bool):
                raise TypeError(
                    f"workers= names workers by address or name (str or int), not {name!r}"
                )
        return [int(n) if isinstance(n, int) else str(n) for n in names]
    raise TypeError(
        f"workers= must be a worker name or address, or a list of them, not {workers!r}"
    )


def _resources(resources: Any) -> dict[str, float]:
    if not isinstance(resources, Mapping):
        raise TypeError(
            f"resources= must be a mapping of resource names to amounts, not {resources!r}"
        )
    out: dict[str, float] = {}
    for name, amount in resources.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"resources= names must be non-empty strings, not {name!r}")
        if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
            raise TypeError(f"resources= amount of {name!r} must be a number, not {amount!r}")
        number = float(amount)
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"resources= amount of {name!r} must be >= 0, not {amount!r}")
        if number:
            out[name] = number
    return out


def _priority(priority: Any) -> int | float:
    if isinstance(priority, bool) or not isinstance(priority, numbers.Real):
        raise TypeError(f"priority= must be a number, not {priority!r}")
    if isinstance(priority, numbers.Integral):
        return int(priority)
    value = float(priority)
    if not math.isfinite(value):
        raise ValueError(f"priority= must be finite, not {priority!r}")
    return value
