"""Serializer families for user types: how instances of a registered class travel.

Everything conveyor sends of a user's is pickled (protocol 5, large buffers out of
band). A user type may want a serializer of its own (a C library's own format, a GPU
array copied to host memory, an object holding a file handle). Register it once, in the
client and in the workers (at import of the module defining the type, or from a preload
or a worker plugin)::

    register_serialization_family("arrow", dumps_table, loads_table)
    register_type(pyarrow.Table, "arrow")      # instances of it (and subclasses)
    register_generic(MyRecord)                 # class + attributes, each on its own

``dumps(obj)`` returns ``(header, frames)``: a picklable header and a list of bytes-like
frames, which travel out of band and zero-copy like numpy's buffers; ``loads(header,
frames)`` gets memoryviews of them back. It works through pickle's ``reducer_override``:
an instance of a registered type is reduced to a call of :func:`_rebuild` with its family
name, so the wire format does not change and a registered value may sit anywhere inside
a task's arguments or result. With nothing registered, nothing changes (one dict check
per pickle). The scheduler never unpickles, so it needs no registration; a receiver
without the family fails with an error that names it.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import cloudpickle

__all__ = [
    "GENERIC",
    "register_generic",
    "register_serialization_family",
    "register_type",
    "registered_family",
]

#: the family of :func:`register_generic`: the class by reference, the attributes each
#: pickled on their own (so registered types among them use their families)
GENERIC = "generic"

#: dumps(obj) -> (header, frames)
Dumps = Callable[[Any], tuple[Any, list[Any]]]
#: loads(header, frames) -> obj
Loads = Callable[[Any, list[memoryview]], Any]


@dataclass(frozen=True, slots=True)
class _Family:
    dumps: Dumps
    loads: Loads


_families: dict[str, _Family] = {}
#: registered classes -> their family (subclasses are looked up along the MRO, cached)
_types: dict[type, str] = {}
_lookup: dict[type, str | None] = {}


def register_serialization_family(name: str, dumps: Dumps, loads: Loads) -> None:
    """Register (or replace) the serializer family ``name``."""
    if not isinstance(name, str) or not name:
        raise TypeError("a serialization family needs a non-empty name")
    if name == GENERIC:
        raise ValueError(f"{GENERIC!r} is conveyor's own family (register_generic)")
    if not callable(dumps) or not callable(loads):
        raise TypeError("dumps and loads must be callables")
    _families[name] = _Family(dumps, loads)


def register_type(cls: type, family: str) -> None:
    """Serialize instances of ``cls`` (and of its subclasses) with ``family``."""
    if not isinstance(cls, type):
        raise TypeError(f"{cls!r} is not a class")
    if family != GENERIC and family not in _families:
        raise ValueError(
            f"no serialization family named {family!r} is registered "
            "(register_serialization_family first)"
        )
    _types[cls] = family
    _lookup.clear()


def register_generic(cls: type) -> None:
    """Send instances of ``cls`` as the class (by reference) and their attributes
    (``__dict__``), each serialized on its own: a registered type held in an attribute
    travels with its own family, and large buffers out of band."""
    register_type(cls, GENERIC)


def registered_family(cls: type) -> str | None:
    """The family instances of ``cls`` travel with, or None."""
    try:
        return _lookup[cls]
    except KeyError:
        pass
    family = next((_types[k] for k in cls.__mro__ if k in _types), None)
    _lookup[cls] = family
    return family


def active() -> bool:
    """Whether any type is registered (else pickling goes the plain way)."""
    return bool(_types)


def _reduce(obj: Any) -> Any:
    family = registered_family(type(obj))
    if family is None:
        return NotImplemented
    if family == GENERIC:
        try:
            state = obj.__dict__
        except AttributeError:
            raise TypeError(f"{type(obj).__name__} has no __dict__ to send") from None
        return (_rebuild_generic, (type(obj), state))
    header, frames = _families[family].dumps(obj)
    return (_rebuild, (family, header, [pickle.PickleBuffer(f) for f in frames]))


def _rebuild(family: str, header: Any, frames: list[Any]) -> Any:
    fam = _families.get(family)
    if fam is None:
        raise TypeError(
            f"cannot deserialize: the serialization family {family!r} is not registered "
            "in this process (register it where the value is read too: in the module "
            "defining the type, a preload or a worker plugin)"
        )
    return fam.loads(header, [memoryview(f) for f in frames])


def _rebuild_generic(cls: Any, state: dict[str, Any]) -> Any:
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        return _reduce(obj)


class _CloudPickler(cloudpickle.Pickler):  # type: ignore[misc]
    def reducer_override(self, obj: Any) -> Any:
        reduced = _reduce(obj)
        return super().reducer_override(obj) if reduced is NotImplemented else reduced


def pickle_with_families(
    obj: Any, by_value: bool, buffer_callback: Callable[[pickle.PickleBuffer], Any] | None
) -> bytes:
    """Pickle ``obj`` (with cloudpickle if ``by_value``), registered types by family."""
    out = BytesIO()
    pickler_class = _CloudPickler if by_value else _Pickler
    pickler_class(out, protocol=5, buffer_callback=buffer_callback).dump(obj)
    return out.getvalue()
