"""encode/decode of control messages: msgpack, tuples, Serialized frames, bad input."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from conveyor.protocol import (
    FrameDecoder,
    ProtocolError,
    Serialized,
    decode,
    dumps,
    encode,
    encode_frames,
    loads,
)


def through_wire(frames: list[bytes | memoryview]) -> list[memoryview]:
    data = b"".join(encode_frames(frames))
    [received] = FrameDecoder(2**30).feed(data)
    return received


def test_round_trip_keeps_tuples_and_non_string_keys() -> None:
    msg = {
        "op": "compute-task",
        "key": ("x-abc", 0, 1),
        "priority": (0, 1, 2),
        "who_has": {("x-abc", 0, 0): ("tcp://a:1", "tcp://b:2"), 5: "five", 2.5: None},
        "nested": {"a": {1: [True, False, b"\x00raw"]}},
        "big": 2**63 - 1,
        "neg": -(2**63),
        "f": 0.1,
    }
    out = decode(through_wire(encode(msg)))
    assert out == {
        **msg,
        "nested": {"a": {1: (True, False, b"\x00raw")}},
    }
    assert isinstance(out, dict)
    assert hash(out["key"]) == hash(("x-abc", 0, 1))


def test_batch_of_many_messages_is_one_frame() -> None:
    batch = [{"op": "task-finished", "key": ("k", i), "nbytes": i * 8} for i in range(5000)]
    frames = encode(batch)
    assert len(frames) == 1
    assert decode(frames) == tuple(batch)


def test_serialized_travels_in_extra_frames_without_copy() -> None:
    arr = np.arange(100_000, dtype="f8")  # 800 kB: out of band
    ser = dumps(arr)
    frames = encode({"op": "data", "data": {"x": ser}, "meta": ser.nbytes})
    assert len(frames) == 3  # msgpack, pickle header, one buffer
    assert frames[1] is ser.header
    assert frames[2] is ser.buffers[0]
    assert np.shares_memory(np.frombuffer(frames[2], dtype="f8"), arr)

    out = decode(frames)
    assert isinstance(out, dict)
    got = out["data"]["x"]
    assert isinstance(got, Serialized)
    back = loads(got)
    assert isinstance(back, np.ndarray)
    assert np.shares_memory(back, arr)  # no copy anywhere on the way


def test_serialized_over_the_wire_arrives_equal_and_writable() -> None:
    arr = np.random.default_rng(0).random(50_000)
    small = dumps({"small": [1, 2, 3]})
    out = decode(through_wire(encode({"a": dumps(arr), "b": small, "c": [small]})))
    assert isinstance(out, dict)
    back = loads(out["a"])
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, arr)
    assert back.flags.writeable
    assert loads(out["b"]) == {"small": [1, 2, 3]}
    assert loads(out["c"][0]) == {"small": [1, 2, 3]}


def test_same_serialized_twice_is_sent_once() -> None:
    ser = dumps(np.ones(20_000))
    frames = encode({"a": ser, "b": ser})
    assert len(frames) == 3
    out = decode(frames)
    assert isinstance(out, dict)
    assert out["a"] == out["b"]


def test_unknown_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="set"):
        encode({"op": "x", "bad": {1, 2}})


def ext(code: int, ref: object) -> bytes:
    packed: bytes = msgpack.packb(msgpack.ExtType(code, msgpack.packb(ref)))
    return packed


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"\xc1"],  # never-used msgpack byte
        [b"\x92\x01"],  # truncated array
        [msgpack.packb([1]) + b"\x01"],  # trailing bytes
        [ext(1, (1, 0))],  # references a frame that is not there
        [ext(1, (0, 0)), b"x"],  # points at the msgpack frame itself
        [ext(1, (1, -1)), b"x"],
        [ext(1, (1, 5)), b"x", b"y"],
        [ext(1, "nonsense"), b"x"],
        [ext(7, (1, 0)), b"x"],  # unknown extension
        [msgpack.packb({"k": 1})[:1] + msgpack.packb({"a": 1})],  # a map used as a map key
    ],
)
def test_bad_frames_raise_protocol_error(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        decode(frames)


def test_frames_over_the_limit_are_sharded_and_joined() -> None:
    arr = np.arange(10_000, dtype="u8")  # 80,000 bytes
    frames = encode({"x": dumps(arr), "y": dumps(b"ab")}, max_frame_size=30_000)
    assert max(len(memoryview(f).cast("B")) for f in frames) <= 30_000
    out = decode(through_wire(frames))
    assert isinstance(out, dict)
    np.testing.assert_array_equal(loads(out["x"]), arr)
    assert loads(out["y"]) == b"ab"


def test_frames_within_the_limit_are_not_sharded() -> None:
    msg = {"x": dumps(np.arange(10, dtype="u8"))}
    assert len(encode(msg, max_frame_size=1 << 20)) == len(encode(msg))


@pytest.mark.parametrize(
    "ref",
    [(1, 1, [1]), (1, 0, [5]), (1, 1, [1, -1]), (1, 0, "x"), (1, 0, [1.5])],
)
def test_bad_shard_references_are_protocol_errors(ref: tuple[object, ...]) -> None:
    frame0 = msgpack.packb({"x": msgpack.ExtType(1, msgpack.packb(ref))})
    with pytest.raises(ProtocolError, match="Bad frame reference"):
        decode([frame0, b"h", b"b"])


def test_a_large_frame_0_is_sharded_and_joined() -> None:
    arr = np.arange(1000, dtype="u8")
    msg = {"blob": bytes(range(256)) * 400, "x": dumps(arr), "key": ("k", 1)}
    frames = encode(msg, max_frame_size=30_000)
    assert max(len(memoryview(f).cast("B")) for f in frames) <= 30_000
    out = decode(through_wire(frames))
    assert isinstance(out, dict)
    assert out["blob"] == msg["blob"] and out["key"] == ("k", 1)
    np.testing.assert_array_equal(loads(out["x"]), arr)


@pytest.mark.parametrize(
    "frame0",
    [
        msgpack.packb([msgpack.ExtType(2, msgpack.packb(1))]),  # not the whole of frame 0
        msgpack.packb(msgpack.ExtType(2, msgpack.packb(5))),  # more shards than frames
        msgpack.packb(msgpack.ExtType(2, msgpack.packb("x"))),
    ],
)
def test_bad_frame_0_shard_markers_are_protocol_errors(frame0: bytes) -> None:
    with pytest.raises(ProtocolError, match="shard"):
        decode([frame0, msgpack.packb(msgpack.ExtType(2, msgpack.packb(1))), b"b"])
