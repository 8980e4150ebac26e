"""FrameDecoder and encode_frames: round trips in every chunking, limits, bad input."""

from __future__ import annotations

import random
import struct
import tracemalloc

import numpy as np
import pytest

from conveyor.protocol import FrameDecoder, ProtocolError, encode_frames

LIMIT = 64 * 1024 * 1024

SMALL_MESSAGES: list[list[bytes]] = [
    [b"hello"],
    [b"", b"a", b""],
    [bytes(range(256)) * 3, b"x" * 1000],
    [b""],
]
LARGE_MESSAGES: list[list[bytes]] = [
    [b"meta", bytes(200_000), b"tail"],
    [b"h", np.arange(300_000, dtype="u8").tobytes()],  # 2.4 MB: received in place
]


def wire(messages: list[list[bytes]]) -> bytes:
    return b"".join(b"".join(encode_frames(frames)) for frames in messages)


def as_bytes(messages: list[list[memoryview]]) -> list[list[bytes]]:
    return [[bytes(f) for f in frames] for frames in messages]


def test_encode_frames_header_and_no_copy() -> None:
    big = memoryview(bytearray(100))
    frames: list[bytes | memoryview] = [b"abc", big]
    out = encode_frames(frames)
    assert out[0] == struct.pack("<IQQ", 2, 3, 100)
    assert out[1] is frames[0]
    assert out[2] is big


def test_encode_frames_counts_bytes_of_multibyte_views() -> None:
    view = memoryview(np.zeros(10, dtype="f8").data)
    assert encode_frames([view])[0] == struct.pack("<IQ", 1, 80)


def test_encode_frames_rejects_empty_message() -> None:
    with pytest.raises(ValueError):
        encode_frames([])


def test_feed_all_at_once_returns_every_message() -> None:
    messages = SMALL_MESSAGES + LARGE_MESSAGES
    decoder = FrameDecoder(LIMIT)
    assert as_bytes(decoder.feed(wire(messages))) == messages
    assert not decoder.mid_message


def test_feed_byte_by_byte() -> None:
    decoder = FrameDecoder(LIMIT)
    data = wire(SMALL_MESSAGES)
    ends, total = set(), 0
    for frames in SMALL_MESSAGES:
        total += len(wire([frames]))
        ends.add(total)
    out: list[list[memoryview]] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
        assert decoder.mid_message == (i + 1 not in ends)
    assert as_bytes(out) == SMALL_MESSAGES


@pytest.mark.parametrize("seed", range(5))
def test_feed_random_chunks(seed: int) -> None:
    rng = random.Random(seed)
    messages = SMALL_MESSAGES + LARGE_MESSAGES + SMALL_MESSAGES
    data = memoryview(wire(messages))
    decoder = FrameDecoder(LIMIT)
    out: list[list[memoryview]] = []
    pos = 0
    while pos < len(data):
        n = rng.choice([1, 3, 7, 100, 5000, 70_000, 1_000_000])
        out += decoder.feed(data[pos : pos + n])
        pos += n
    assert as_bytes(out) == messages


def receive(decoder: FrameDecoder, data: bytes, rng: random.Random) -> list[list[memoryview]]:
    """Drive get_buffer/buffer_updated the way a socket would, in random read sizes."""
    out: list[list[memoryview]] = []
    pos = 0
    while pos < len(data):
        buf = decoder.get_buffer(-1)
        assert len(buf) > 0
        n = min(len(buf), len(data) - pos, rng.choice([1, 5, 1000, 65536, 10**7]))
        buf[:n] = data[pos : pos + n]
        pos += n
        out += decoder.buffer_updated(n)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_buffered_protocol_round_trip(seed: int) -> None:
    messages = SMALL_MESSAGES + LARGE_MESSAGES + SMALL_MESSAGES
    out = receive(FrameDecoder(LIMIT), wire(messages), random.Random(seed))
    assert as_bytes(out) == messages


def test_large_frame_is_received_in_place() -> None:
    payload = np.arange(500_000, dtype="u8")  # 4 MB
    data = wire([[b"head", payload.tobytes()]])
    header_size = 4 + 2 * 8 + 4
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(data[:header_size]) == []
    buf = decoder.get_buffer(-1)
    assert len(buf) == payload.nbytes  # a view into the frame itself, not scratch space
    buf[:] = data[header_size:]
    [message] = decoder.buffer_updated(len(buf))
    frame = message[1]
    assert np.shares_memory(np.frombuffer(frame, dtype="u1"), np.frombuffer(buf, dtype="u1"))
    assert (np.frombuffer(frame, dtype="u8") == payload).all()


def test_small_frames_use_scratch_and_are_copied_out() -> None:
    decoder = FrameDecoder(LIMIT)
    data = wire([[b"abc"], [b"defg"]])
    scratch = decoder.get_buffer(-1)
    scratch[: len(data)] = data
    first = decoder.buffer_updated(len(data))
    assert decoder.get_buffer(-1) is scratch
    scratch[:16] = b"\xff" * 16  # reusing the scratch buffer must not change messages
    assert as_bytes(first) == [[b"abc"], [b"defg"]]


def test_received_frames_are_writable() -> None:
    for frames in FrameDecoder(LIMIT).feed(wire(SMALL_MESSAGES + LARGE_MESSAGES)):
        for frame in frames:
            assert not frame.readonly


@pytest.mark.parametrize(
    "header, match",
    [
        (struct.pack("<I", 0), "zero frames"),
        (struct.pack("<I", 10_001), "10001 frames"),
        (struct.pack("<IQ", 1, 2**40), "1.00 TiB exceeds limit"),
        (struct.pack("<IQQ", 2, 10, LIMIT + 1), "exceeds limit"),
    ],
)
def test_bad_declarations_raise(header: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        FrameDecoder(LIMIT).feed(header)


def test_huge_declaration_raises_before_allocating() -> None:
    decoder = FrameDecoder(max_frame_size=2**50)  # lets one 1 TB frame through the frame cap
    decoder.max_message_size = 2**30
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match=r"message of 1\.00 TiB exceeds limit 1\.00 GiB"):
            decoder.feed(struct.pack("<IQ", 1, 2**40))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_declaration_split_across_feeds_is_checked() -> None:
    decoder = FrameDecoder(max_frame_size=1000)
    header = struct.pack("<IQ", 1, 5_000_000_000)
    assert decoder.feed(header[:7]) == []
    with pytest.raises(ProtocolError, match="exceeds limit"):
        decoder.feed(header[7:])


def test_message_size_limit() -> None:
    decoder = FrameDecoder(max_frame_size=100, max_message_size=150)
    assert as_bytes(decoder.feed(wire([[b"x" * 100, b"y" * 50]]))) == [[b"x" * 100, b"y" * 50]]
    with pytest.raises(ProtocolError, match="message of"):
        decoder.feed(wire([[b"x" * 100, b"y" * 51]]))


def test_http_request_is_rejected() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder(LIMIT).feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_http_request_via_buffer_is_rejected() -> None:
    decoder = FrameDecoder(LIMIT)
    buf = decoder.get_buffer(-1)
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    buf[: len(request)] = request
    with pytest.raises(ProtocolError):
        decoder.buffer_updated(len(request))


def test_garbage_is_rejected() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder(LIMIT).feed(b"\xff" * 64)


def test_decoder_stays_failed() -> None:
    decoder = FrameDecoder(LIMIT)
    with pytest.raises(ProtocolError):
        decoder.feed(struct.pack("<I", 0))
    with pytest.raises(ProtocolError, match="already failed"):
        decoder.feed(wire([[b"fine"]]))
