"""Serialization of user data: pickle protocol 5 with out-of-band buffers.

User objects become a :class:`Serialized`: a pickle ``header`` plus raw ``buffers`` for
large contiguous data (numpy arrays and the like) that travel as separate frames without
being copied. Plain :mod:`pickle` is tried first and :mod:`cloudpickle` handles what it
cannot (lambdas, closures, interactively defined classes). Functions, which are submitted
over and over, have their own cached helpers.
"""

from __future__ import annotations

import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import cloudpickle

from conveyor.protocol import families

__all__ = [
    "OUT_OF_BAND_THRESHOLD",
    "Serialized",
    "dumps",
    "dumps_function",
    "loads",
    "loads_function",
    "pickle_bytes",
    "unpickle_bytes",
]

#: Buffers of at least this many bytes are sent out of band, smaller ones inside the pickle.
OUT_OF_BAND_THRESHOLD = 64 * 1024
_FUNCTION_CACHE_SIZE = 128
_FUNCTION_CACHE_MAX_BYTES = 64 * 1024

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(slots=True)
class Serialized:
    """An opaque serialized object: a pickle header and its out-of-band buffers.

    Only workers and clients look inside; the scheduler passes it through untouched.
    Received instances hold ``memoryview``s of the received frames.
    """

    header: bytes | memoryview
    buffers: list[memoryview | bytes]

    @property
    def nbytes(self) -> int:
        """Total size of the header and all buffers in bytes."""
        return _nbytes(self.header) + sum(_nbytes(b) for b in self.buffers)


def _nbytes(buf: bytes | memoryview) -> int:
    return buf.nbytes if isinstance(buf, memoryview) else len(buf)


def _serialize_error(obj: object, exc: Exception) -> TypeError:
    return TypeError(f"Could not serialize object of type {type(obj).__name__}: {exc}")


def dumps(obj: object) -> Serialized:
    """Serialize ``obj``; buffers of >= 64 KiB are kept out of band, uncopied. Plain
    pickle unless it fails or names ``__main__`` (a script's classes: the receiving
    process may not have them) or a by-value module: then cloudpickle, by value."""
    buffers: list[memoryview | bytes] = []

    def keep_large_out_of_band(buf: pickle.PickleBuffer) -> bool:
        try:
            raw = buf.raw()
        except BufferError:  # not contiguous: let pickle copy it in band
            return True
        if raw.nbytes < OUT_OF_BAND_THRESHOLD:
            return True
        buffers.append(raw)
        return False

    try:
        header = _pickle(obj, False, keep_large_out_of_band)
    except Exception:
        header = b"__main__"
    if _needs_by_value(header):
        buffers.clear()
        try:
            header = _pickle(obj, True, keep_large_out_of_band)
        except Exception as e:
            raise _serialize_error(obj, e) from e
    return Serialized(header, buffers)


def _pickle(
    obj: object, by_value: bool, callback: Callable[[pickle.PickleBuffer], bool] | None = None
) -> bytes:
    """Pickle with plain pickle or (``by_value``) cloudpickle; registered user types
    through their serializer families (:mod:`conveyor.protocol.families`)."""
    if families.active():
        return families.pickle_with_families(obj, by_value, callback)
    if by_value:
        data: bytes = cloudpickle.dumps(obj, protocol=5, buffer_callback=callback)
        return data
    return pickle.dumps(obj, protocol=5, buffer_callback=callback)


def loads(ser: Serialized) -> object:
    """Rebuild the object held by ``ser`` (its buffers are used without copying)."""
    return pickle.loads(ser.header, buffers=ser.buffers)


def pickle_bytes(obj: object) -> bytes:
    """Pickle a small object fully in band (cloudpickle when plain pickle cannot)."""
    try:
        data = _pickle(obj, False)
    except Exception:
        data = b"__main__"
    if _needs_by_value(data):
        try:
            data = _pickle(obj, True)
        except Exception as e:
            raise _serialize_error(obj, e) from e
    return data


def dumps_spec(obj: object) -> bytes:
    """Pickle a task's arguments or graph node, fast when it can be done safely.

    Plain pickle (C speed) unless it fails or refers to ``__main__`` or to a module
    registered with ``cloudpickle.register_pickle_by_value``, whose functions and classes
    a worker may not be able to import: those go through cloudpickle, by value.
    """
    try:
        data = _pickle(obj, False)
    except Exception:
        data = b"__main__"
    if _needs_by_value(data):
        try:
            data = _pickle(obj, True)
        except Exception as e:
            raise _serialize_error(obj, e) from e
    return data


def _needs_by_value(data: bytes) -> bool:
    """Whether plainly pickled ``data`` may refer to ``__main__`` or to a module that
    cloudpickle pickles by value: classes and functions another process may not be able
    to import (a value of a class defined in a script, scattered to worker processes).
    A false positive (the bytes ``__main__`` inside a string) only costs a cloudpickle."""
    if b"__main__" in data:
        return True
    return any(name.encode() in data for name in cloudpickle.list_registry_pickle_by_value())


def unpickle_bytes(data: bytes | bytearray | memoryview) -> object:
    """Inverse of :func:`pickle_bytes`."""
    return pickle.loads(data)


class _SmallLRU(Generic[K, V]):
    """A thread-safe LRU mapping of at most ``maxsize`` entries."""

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """Return the value for ``key`` (marking it recently used), or None."""
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        """Store ``value``, evicting the least recently used entry when full."""
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            if len(self._data) > self._maxsize:
                self._data.popitem(last=False)


# Only small pickles are cached: a big one means a function closing over big data,
# which the cache would otherwise keep alive.
_dumped_functions: _SmallLRU[Callable[..., object], bytes] = _SmallLRU(_FUNCTION_CACHE_SIZE)
_loaded_functions: _SmallLRU[bytes, Callable[..., object]] = _SmallLRU(_FUNCTION_CACHE_SIZE)


def _dumps_function(func: Callable[..., object]) -> bytes:
    try:
        data: bytes = cloudpickle.dumps(func, protocol=5)
    except Exception as e:
        raise _serialize_error(func, e) from e
    return data


def dumps_function(func: Callable[..., object]) -> bytes:
    """Pickle a function with cloudpickle, caching the result per (hashable) function."""
    try:
        data = _dumped_functions.get(func)
    except TypeError:  # unhashable callable: no caching
        return _dumps_function(func)
    if data is None:
        data = _dumps_function(func)
        if len(data) <= _FUNCTION_CACHE_MAX_BYTES:
            _dumped_functions.put(func, data)
    return data


def loads_function(data: bytes | bytearray | memoryview) -> Callable[..., object]:
    """Unpickle a function made by :func:`dumps_function`, cached on the bytes."""
    key = data if isinstance(data, bytes) else bytes(data)
    func = _loaded_functions.get(key)
    if func is None:
        loaded = pickle.loads(key)
        if not callable(loaded):
            raise TypeError(f"Expected a pickled callable, got {type(loaded).__name__}")
        func = loaded
        if len(key) <= _FUNCTION_CACHE_MAX_BYTES:
            _loaded_functions.put(key, func)
    return func
