"""Control-message encoding: msgpack for the message, extra frames for user data.

Frame 0 of an encoded message is msgpack. Each :class:`Serialized` inside the message is
replaced by a msgpack extension (code 1) holding ``(first frame index, buffer count)``;
its header and buffers follow frame 0 as frames of their own, never copied. Decoding
unpacks arrays as tuples, so tuple task keys survive a round trip and stay hashable.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack

from conveyor.protocol.errors import ProtocolError
from conveyor.protocol.serialize import Serialized

__all__ = ["SERIALIZED_EXT_CODE", "decode", "encode"]

SERIALIZED_EXT_CODE = 1


def encode(msg: object) -> list[bytes | memoryview]:
    """Encode a control message into frames; frame 0 is msgpack.

    Raises ``TypeError`` for values msgpack cannot represent.
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
            payload = msgpack.packb((len(frames), len(obj.buffers)))
            ref = refs[id(obj)] = msgpack.ExtType(SERIALIZED_EXT_CODE, payload)
            frames.append(obj.header)
            frames.extend(obj.buffers)
        return ref

    frames[0] = msgpack.packb(msg, use_bin_type=True, default=default)
    return frames


def decode(frames: Sequence[memoryview | bytes]) -> object:
    """Decode frames made by :func:`encode`; bad input raises :class:`ProtocolError`."""
    if not frames:
        raise ProtocolError("Message has no frames")
    nframes = len(frames)

    def ext_hook(code: int, data: bytes) -> Serialized:
        if code != SERIALIZED_EXT_CODE:
            raise ProtocolError(f"Unknown msgpack extension type {code}")
        ref = msgpack.unpackb(data)
        if (
            not isinstance(ref, list)
            or len(ref) != 2
            or not all(type(x) is int for x in ref)
            or ref[0] < 1
            or ref[1] < 0
            or ref[0] + ref[1] >= nframes
        ):
            raise ProtocolError(f"Bad frame reference {ref!r} in a message of {nframes} frames")
        start, nbuffers = ref
        return Serialized(frames[start], list(frames[start + 1 : start + 1 + nbuffers]))

    try:
        return msgpack.unpackb(
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
