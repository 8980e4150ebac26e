"""Packing a worker's data for the wire (``get-data`` replies) and unpacking it.

Small values travel together in one pickle, so fetching thousands of small results
costs one serialization, not thousands; large values (numpy arrays...) each get their
own :class:`Serialized` whose buffers travel as separate frames without copies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dask.sizeof import sizeof

from conveyor.protocol import Serialized, dumps, loads

#: values estimated below this many bytes are pickled together
SMALL = 64 * 1024
#: results up to this size ride along with their completion to a waiting client
INLINE_RESULT_BYTES = 16 * 1024


def pack_data(data: Mapping[Any, Any], keys: Iterable[Any]) -> dict[str, Any]:
    """A ``get-data`` reply for ``keys``: batched small values, large ones, missing keys."""
    small: dict[Any, Any] = {}
    large: dict[Any, Serialized] = {}
    missing: list[Any] = []
    for key in keys:
        try:
            value = data[key]
        except KeyError:
            missing.append(key)
            continue
        if sizeof(value) < SMALL:
            small[key] = value
        else:
            large[key] = dumps(value)
    reply: dict[str, Any] = {"data": large, "missing": missing}
    if small:
        reply["small"] = dumps(list(small.items()))
    return reply


def unpack_data(reply: Mapping[str, Any]) -> tuple[dict[Any, Any], dict[Any, int], list[Any]]:
    """Values, their sizes and the missing keys from a ``get-data`` reply."""
    values: dict[Any, Any] = {}
    sizes: dict[Any, int] = {}
    packed = reply.get("small")
    if packed is not None:
        for key, value in loads(packed):  # type: ignore[attr-defined]
            values[key] = value
            sizes[key] = sizeof(value)
    for key, ser in reply.get("data", {}).items():
        values[key] = loads(ser)
        sizes[key] = ser.nbytes
    return values, sizes, list(reply.get("missing") or ())
