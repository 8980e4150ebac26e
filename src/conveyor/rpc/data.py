"""Packing a worker's data for the wire (``get-data`` replies) and unpacking it.

Small values travel together in one pickle, so fetching thousands of small results
costs one serialization, not thousands; large values (numpy arrays...) each get their
own :class:`Serialized` whose buffers travel as separate frames without copies.

Sizes travel with the values: the sender knows them (a worker sizes each result once,
when it is made), and the receiver takes them as they are instead of measuring each
value again (dask's ``sizeof`` of a small pandas frame costs about as much as
unpickling it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from conveyor.protocol import Serialized, dumps, loads
from conveyor.rpc.sizes import nbytes

#: values estimated below this many bytes are pickled together
SMALL = 64 * 1024
#: results up to this size ride along with their completion to a waiting client
INLINE_RESULT_BYTES = 16 * 1024


def pack_data(
    data: Mapping[Any, Any], keys: Iterable[Any], sizes: Mapping[Any, int] | None = None
) -> dict[str, Any]:
    """A ``get-data`` reply for ``keys``: batched small values (with their sizes), large
    ones, missing keys. ``sizes``: the sizes known already, by key (a negative one is
    unknown); the others are measured."""
    small: list[tuple[Any, Any]] = []
    small_sizes: list[int] = []
    large: dict[Any, Serialized] = {}
    missing: list[Any] = []
    known = sizes if sizes is not None else {}
    for key in keys:
        try:
            value = data[key]
        except KeyError:
            missing.append(key)
            continue
        size = known.get(key, -1)
        if size < 0:
            size = nbytes(value)
        if size < SMALL:
            small.append((key, value))
            small_sizes.append(size)
        else:
            large[key] = dumps(value)
    reply: dict[str, Any] = {"data": large, "missing": missing}
    if small:
        reply["small"] = dumps(small)
        reply["small_sizes"] = small_sizes
    return reply


def unpack_data(reply: Mapping[str, Any]) -> tuple[dict[Any, Any], dict[Any, int], list[Any]]:
    """Values, their sizes and the missing keys from a ``get-data`` reply."""
    values: dict[Any, Any] = {}
    sizes: dict[Any, int] = {}
    packed = reply.get("small")
    if packed is not None:
        items: list[tuple[Any, Any]] = loads(packed)  # type: ignore[assignment]
        given = reply.get("small_sizes")
        if given is None or len(given) != len(items):
            given = [nbytes(value) for _, value in items]
        for (key, value), size in zip(items, given, strict=True):
            values[key] = value
            sizes[key] = size
    for key, ser in reply.get("data", {}).items():
        values[key] = loads(ser)
        sizes[key] = ser.nbytes
    return values, sizes, list(reply.get("missing") or ())
