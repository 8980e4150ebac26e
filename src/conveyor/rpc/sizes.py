"""How many bytes a value takes, as workers and clients count it.

dask's :func:`~dask.sizeof.sizeof` is the rule, with two shortcuts for the values that
dominate DataFrame workloads:

* an exact ``pandas.DataFrame``/``Series`` whose columns and index hold no Python objects
  is sized from its arrays' ``nbytes`` (about 1 us; dask's ``sizeof`` builds a Series per
  column and takes about 70 us for three columns on pandas 3, more than many tasks run);
* a plain ``dict``, ``list`` or ``tuple`` of at most :data:`SHALLOW_ITEMS` items, and
  the groups of dask's task-based shuffle (a dict of frames, which sizes itself as the
  sum of its items), is the sum of its items, each sized by these rules.

Anything else, or a frame with object columns (whose strings dask samples), or a type
with its own ``sizeof`` registration, goes to dask's ``sizeof``. A worker sizes each
result once (:func:`nbytes`) and sends the size along when the value travels, so it is
never measured again.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from dask.sizeof import sizeof

__all__ = ["SHALLOW_ITEMS", "nbytes"]

#: containers with at most this many items are summed item by item (larger: dask samples)
SHALLOW_ITEMS = 64
#: bytes counted for a frame's own objects (its block manager, index and column labels)
_FRAME_OVERHEAD = 1200
#: bytes counted per column label
_LABEL_BYTES = 64

#: type -> how to size it (None: dask's sizeof); decided on first sight of each type
_rules: dict[type, Callable[[Any], int | None] | None] = {}
#: at most this many types are remembered (classes made at run time must not pile up)
_MAX_RULES = 256
_CONTAINERS = (dict, list, tuple)
#: types whose size is ``sys.getsizeof`` (dask's rule for them too)
_ATOMS = frozenset({int, float, bool, complex, str, type(None)})
#: dict subclasses that size themselves as the sum of their items: (module, name)
_SUMMED_DICTS = {("dask.dataframe.backends", "ShuffleGroupResult")}


def nbytes(value: object) -> int:
    """The size of ``value`` in bytes: dask's ``sizeof``, or a faster estimate (above)."""
    rule = _lookup(type(value))
    if rule is not None:
        size = _apply(rule, value)
        if size is not None:
            return size
    return int(sizeof(value))


def _lookup(kind: type) -> Callable[[Any], int | None] | None:
    try:
        return _rules[kind]
    except KeyError:
        rule = _rule_for(kind)
        if len(_rules) < _MAX_RULES:
            _rules[kind] = rule
        return rule


def _apply(rule: Callable[[Any], int | None], value: object) -> int | None:
    try:
        return rule(value)
    except Exception:  # a changed pandas, an odd subclass: dask knows better
        return None


def _rule_for(kind: type) -> Callable[[Any], int | None] | None:
    """The shortcut for values of ``kind``, or None for dask's ``sizeof``."""
    module = kind.__module__
    if kind in _CONTAINERS or (module, kind.__qualname__) in _SUMMED_DICTS:
        return _container
    if module.startswith("pandas"):
        pandas = sys.modules.get("pandas")
        if pandas is not None and kind is pandas.DataFrame:
            return _frame
        if pandas is not None and kind is pandas.Series:
            return _series
    if isinstance(kind, type) and issubclass(kind, dict) and _sized_as_dict(kind):
        return _container  # a dict subclass nobody registered a size for
    return None


def _sized_as_dict(kind: type) -> bool:
    """Whether dask sizes ``kind`` with its rule for plain dicts (no registration)."""
    try:
        dispatch = sizeof.dispatch
        return bool(dispatch(kind) is dispatch(dict))  # type: ignore[no-untyped-call]
    except Exception:
        return False


def _container(value: Any) -> int | None:
    if len(value) > SHALLOW_ITEMS:
        return None
    if isinstance(value, dict):
        total = dict.__sizeof__(value)  # not the type's own __sizeof__: it may sum items
        for key, item in value.items():
            total += _item(key) + _item(item)
        return total
    base = list if isinstance(value, list) else tuple
    return base.__sizeof__(value) + sum(_item(item) for item in value)


def _item(value: object) -> int:
    """An item of a container: the shortcuts for frames, dask's ``sizeof`` otherwise
    (no nesting of shortcuts for containers: dask samples deep structures)."""
    kind = type(value)
    if kind in _ATOMS:
        return sys.getsizeof(value)
    rule = _lookup(kind)
    if rule is not None and rule is not _container:
        size = _apply(rule, value)
        if size is not None:
            return size
    return int(sizeof(value))


def _frame(df: Any) -> int | None:
    total = _index(df.index)
    if total is None:
        return None
    for array in df._mgr.arrays:
        size = _array(array)
        if size is None:
            return None
        total += size
    return total + _FRAME_OVERHEAD + _LABEL_BYTES * len(df.columns)


def _series(s: Any) -> int | None:
    index = _index(s.index)
    values = _array(s._values)
    if index is None or values is None:
        return None
    return index + values + _FRAME_OVERHEAD


def _index(index: Any) -> int | None:
    """A RangeIndex costs nothing; other indexes count like columns."""
    if type(index).__name__ == "RangeIndex":
        return 0
    if getattr(index, "nlevels", 1) != 1:
        return None
    return _array(index._values)


def _array(array: Any) -> int | None:
    """The bytes of one column's values, or None if they hold Python objects (which
    dask's ``sizeof`` samples) or are categorical (whose categories may)."""
    dtype = array.dtype
    storage = getattr(dtype, "storage", None)
    if storage != "pyarrow" and (storage == "python" or getattr(dtype, "kind", "O") == "O"):
        return None  # Python objects (strings, categories holding them...)
    return int(array.nbytes)
