"""Serializer families for user types: registered types travel through their own
dumps/loads, anywhere inside a value, with frames out of band; unregistered ones as
before; a receiver without the family says so."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from conveyor.protocol import (
    dumps,
    dumps_spec,
    families,
    loads,
    pickle_bytes,
    register_generic,
    register_serialization_family,
    register_type,
    unpickle_bytes,
)
from conveyor.testing.cluster import in_process_cluster


class Blob:
    """A type with a serializer of its own (counts its uses)."""

    dumped = 0
    loaded = 0

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Blob) and other.payload == self.payload

    __hash__ = None  # type: ignore[assignment]


class Record:
    def __init__(self, name: str, blob: Blob, array: Any) -> None:
        self.name, self.blob, self.array = name, blob, array


def dumps_blob(blob: Blob) -> tuple[dict[str, Any], list[bytes]]:
    Blob.dumped += 1
    return {"n": len(blob.payload)}, [blob.payload]


def loads_blob(header: dict[str, Any], frames: list[memoryview]) -> Blob:
    Blob.loaded += 1
    assert header["n"] == frames[0].nbytes
    return Blob(bytes(frames[0]))


@pytest.fixture
def registered() -> Iterator[None]:
    saved = dict(families._families), dict(families._types)
    register_serialization_family("blob", dumps_blob, loads_blob)
    register_type(Blob, "blob")
    Blob.dumped = Blob.loaded = 0
    yield
    families._families.clear()
    families._families.update(saved[0])
    families._types.clear()
    families._types.update(saved[1])
    families._lookup.clear()


def test_a_registered_type_travels_through_its_family_anywhere(registered: None) -> None:
    value = {"a": [Blob(b"x" * 100_000), 1], "b": (Blob(b"small"),)}
    ser = dumps(value)
    assert Blob.dumped == 2
    assert [len(bytes(b)) for b in ser.buffers] == [100_000]  # the large frame: out of band
    assert loads(ser) == value
    assert Blob.loaded == 2
    assert unpickle_bytes(pickle_bytes(value)) == value
    assert pickle.loads(dumps_spec(value)) == value


def test_generic_types_send_their_attributes_each_with_its_family(registered: None) -> None:
    register_generic(Record)
    rec = Record("r", Blob(b"payload"), np.arange(100_000))
    ser = dumps(rec)
    assert Blob.dumped == 1 and len(ser.buffers) == 1  # the array, out of band
    back = loads(ser)
    assert isinstance(back, Record) and back.name == "r" and back.blob == Blob(b"payload")
    assert np.array_equal(back.array, np.arange(100_000))


def test_a_receiver_without_the_family_names_it(registered: None) -> None:
    data = pickle_bytes(Blob(b"x"))
    del families._families["blob"]
    with pytest.raises(TypeError, match="family 'blob' is not registered in this process"):
        unpickle_bytes(data)


def test_registrations_are_checked(registered: None) -> None:
    with pytest.raises(ValueError, match="no serialization family named 'nope'"):
        register_type(Blob, "nope")
    with pytest.raises(TypeError, match="is not a class"):
        register_type(Blob(b""), "blob")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="conveyor's own family"):
        register_serialization_family("generic", dumps_blob, loads_blob)


def test_nothing_registered_pickles_the_plain_way() -> None:
    assert not families.active()
    assert loads(dumps({"x": Blob(b"y")})) == {"x": Blob(b"y")}


def make_blob(n: int) -> Blob:
    return Blob(b"z" * n)


def blob_size(blob: Blob) -> int:
    return len(blob.payload)


def test_workers_and_clients_use_the_family(registered: None) -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=2) as (_, workers, c):
            made = c.submit(make_blob, 200_000, workers=[workers[0].address])
            size = c.submit(blob_size, made, workers=[workers[1].address])  # a transfer
            assert await size == 200_000
            assert await made == Blob(b"z" * 200_000)
            assert await c.submit(blob_size, Blob(b"abc")) == 3  # an argument

    asyncio.run(main())
    assert Blob.dumped >= 3 and Blob.loaded >= 3
