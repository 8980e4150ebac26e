"""Control-message encoding: msgpack for the message, extra frames for user data.

Frame 0 of an encoded message is msgpack. Each :class:`Serialized` inside the message is
replaced by a msgpack extension (code 1) holding ``(first frame index, buffer count)``;
its header and buffers follow frame 0 as frames of their own, never copied. Decoding
unpacks arrays as tuples, so tuple task keys survive a round trip and stay hashable.

A transport caps the size of one frame (``conveyor.comm.max-frame-size``) so that no
single declaration makes the receiver allocate without bound; user data is not capped
that way. Given ``max_frame_size``, :func:`encode` sends a header or buffer larger than
that as consecutive shards (memoryview slices: no copy) and the extension carries a
third item, the shard count of the header and of each buffer; :func:`decode` joins the
shards back into one buffer (one copy, paid only by objects over the frame limit).
Frame 0 itself, when larger (a graph whose pickled tasks hold a large constant inline),
is sent as shards behind a small frame 0 holding only the extension ``(code 2, shard
count)``. The whole message stays bounded by the transport's message-size limit.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack

from conveyor.protocol.errors import ProtocolError
from conveyor.protocol.framing import allocate_frame
from conveyor.protocol.serialize import Serialized

__all__ = ["SERIALIZED_EXT_CODE", "decode", "encode"]

SERIALIZED_EXT_CODE = 1
_SHARDED_FRAME0_EXT_CODE = 2


class _Frame0Shards:
    """Decoded marker: frame 0 follows in ``count`` shards."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


def _shards(frame: bytes | memoryview, limit: int) -> list[bytes | memoryview]:
    view = memoryview(frame).cast("B")
    return [view[i : i + limit] for i in range(0, max(view.nbytes, 1), limit)]


def _join(shards: Sequence[memoryview | bytes]) -> memoryview:
    out = allocate_frame(sum(len(memoryview(s).cast("B")) for s in shards))
    offset = 0
    for shard in shards:
        view = memoryview(shard).cast("B")
        out[offset : offset + view.nbytes] = view
        offset += view.nbytes
    return out


def _nbytes(frame: bytes | memoryview) -> int:
    return frame.nbytes if isinstance(frame, memoryview) else len(frame)


def encode(msg: object, max_frame_size: int | None = None) -> list[bytes | memoryview]:
    """Encode a control message into frames; frame 0 is msgpack.

    With ``max_frame_size``, user data frames larger than it are split into shards (see
    the module docstring); frame 0 itself is never split. Raises ``TypeError`` for
    values msgpack cannot represent.
    """
    frames: list[bytes | memoryview] = [b""]
    refs: dict[int, msgpack.ExtType] = {}

    def default(obj: object) -> msgpack.ExtType:
        if not isinstance(obj, Serialized):
            raise TypeError(
                f"Cannot encode object of type {type(obj).__name__} in a control message"
            )
        ref = refs.get(id(obj))
        if ref is None:
            start = len(frames)
            parts = [obj.header, *obj.buffers]
            if max_frame_size is None or all(_nbytes(p) <= max_frame_size for p in parts):
                payload = msgpack.packb((start, len(obj.buffers)))
                frames.extend(parts)
            else:
                counts = []
                for part in parts:
                    shards = _shards(part, max(max_frame_size, 1))
                    counts.append(len(shards))
                    frames.extend(shards)
                payload = msgpack.packb((start, len(obj.buffers), counts))
            ref = refs[id(obj)] = msgpack.ExtType(SERIALIZED_EXT_CODE, payload)
        return ref

    frames[0] = frame0 = msgpack.packb(msg, use_bin_type=True, default=default)
    if max_frame_size is not None and len(frame0) > max_frame_size:
        shards = _shards(frame0, max(max_frame_size, 1))
        marker = msgpack.ExtType(_SHARDED_FRAME0_EXT_CODE, msgpack.packb(len(shards)))
        return [msgpack.packb(marker), *shards, *frames[1:]]
    return frames


def _bad_ref(ref: object, nframes: int) -> ProtocolError:
    return ProtocolError(f"Bad frame reference {ref!r} in a message of {nframes} frames")


def _sharded(
    frames: Sequence[memoryview | bytes], start: int, nbuffers: int, counts: object
) -> Serialized:
    nframes = len(frames)
    if (
        not isinstance(counts, list)
        or len(counts) != nbuffers + 1
        or not all(type(c) is int and c >= 0 for c in counts)
        or start + sum(counts) > nframes
    ):
        raise _bad_ref((start, nbuffers, counts), nframes)
    parts: list[memoryview | bytes] = []
    at = start
    for count in counts:
        piece = frames[at : at + count]
        parts.append(piece[0] if count == 1 else _join(piece))
        at += count
    return Serialized(parts[0], parts[1:])


def decode(frames: Sequence[memoryview | bytes]) -> object:
    """Decode frames made by :func:`encode`; bad input raises :class:`ProtocolError`."""
    if not frames:
        raise ProtocolError("Message has no frames")
    nframes = len(frames)
    markers: list[_Frame0Shards] = []

    def ext_hook(code: int, data: bytes) -> Serialized | _Frame0Shards:
        if code == _SHARDED_FRAME0_EXT_CODE:
            count = msgpack.unpackb(data)
            if type(count) is not int or not 1 <= count < nframes:
                raise ProtocolError(f"Bad frame 0 shard count {count!r} of {nframes} frames")
            markers.append(_Frame0Shards(count))
            return markers[-1]
        if code != SERIALIZED_EXT_CODE:
            raise ProtocolError(f"Unknown msgpack extension type {code}")
        ref = msgpack.unpackb(data)
        if (
            not isinstance(ref, list)
            or len(ref) not in (2, 3)
            or not all(type(x) is int for x in ref[:2])
            or ref[0] < 1
            or ref[1] < 0
        ):
            raise _bad_ref(ref, nframes)
        if len(ref) == 3:
            return _sharded(frames, ref[0], ref[1], ref[2])
        start, nbuffers = ref
        if start + nbuffers >= nframes:
            raise _bad_ref(ref, nframes)
        return Serialized(frames[start], list(frames[start + 1 : start + 1 + nbuffers]))

    try:
        msg = msgpack.unpackb(
            frames[0],
            use_list=False,
            raw=False,
            strict_map_key=False,
            ext_hook=ext_hook,
        )
    except ProtocolError:
        raise
    except Exception as e:
        raise ProtocolError(f"Could not decode message: {e!r}") from e
    if not markers:
        return msg
    if msg is not markers[0] or len(markers) > 1:
        raise ProtocolError("A frame 0 shard marker must be the whole of frame 0")
    whole = _join(frames[1 : 1 + msg.count])
    msg = decode([whole, *frames[1 + msg.count :]])
    if isinstance(msg, _Frame0Shards):
        raise ProtocolError("A frame 0 shard marker inside sharded frame 0")
    return msg
