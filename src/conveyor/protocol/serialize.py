"""Serialization of user data: pickle protocol 5 with out-of-band buffers.

User objects become a :class:`Serialized`: a pickle ``header`` plus raw ``buffers`` for
large contiguous data (numpy arrays and the like) that travel as separate frames without
being copied. Plain :mod:`pickle` is tried first and :mod:`cloudpickle` handles what it
cannot (lambdas, closures, interactively defined classes). Functions, which are submitted
over and over, have their own cached helpers.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import cloudpickle

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
    """Serialize ``obj``; buffers of >= 64 KiB are kept out of band, uncopied."""
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
        header = pickle.dumps(obj, protocol=5, buffer_callback=keep_large_out_of_band)
    except Exception:
        buffers.clear()
        try:
            header = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep_large_out_of_band)
        except Exception as e:
            raise _serialize_error(obj, e) from e
    return Serialized(header, buffers)


def loads(ser: Serialized) -> object:
    """Rebuild the object held by ``ser`` (its buffers are used without copying)."""
    return pickle.loads(ser.header, buffers=ser.buffers)


def pickle_bytes(obj: object) -> bytes:
    """Pickle a small object fully in band (cloudpickle when plain pickle cannot)."""
    try:
        return pickle.dumps(obj, protocol=5)
    except Exception:
        try:
            data: bytes = cloudpickle.dumps(obj, protocol=5)
        except Exception as e:
            raise _serialize_error(obj, e) from e
        return data


def unpickle_bytes(data: bytes | bytearray | memoryview) -> object:
    """Inverse of :func:`pickle_bytes`."""
    return pickle.loads(data)


@functools.lru_cache(maxsize=_FUNCTION_CACHE_SIZE)
def _dumps_function_cached(func: Callable[..., object]) -> bytes:
    return _dumps_function(func)


def _dumps_function(func: Callable[..., object]) -> bytes:
    try:
        data: bytes = cloudpickle.dumps(func, protocol=5)
    except Exception as e:
        raise _serialize_error(func, e) from e
    return data


def dumps_function(func: Callable[..., object]) -> bytes:
    """Pickle a function with cloudpickle, caching the result per (hashable) function."""
    try:
        hash(func)
    except TypeError:
        return _dumps_function(func)
    return _dumps_function_cached(func)


@functools.lru_cache(maxsize=_FUNCTION_CACHE_SIZE)
def _loads_function_cached(data: bytes) -> Callable[..., object]:
    func = pickle.loads(data)
    if not callable(func):
        raise TypeError(f"Expected a pickled callable, got {type(func).__name__}")
    return func  # type: ignore[no-any-return]


def loads_function(data: bytes | bytearray | memoryview) -> Callable[..., object]:
    """Unpickle a function made by :func:`dumps_function`, cached on the bytes."""
    return _loads_function_cached(data if isinstance(data, bytes) else bytes(data))
