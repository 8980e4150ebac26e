"""Message framing: a message is a list of frames sent behind one small header.

Theory of operation
-------------------
On the wire a message is a little-endian header, ``u32 nframes`` followed by one ``u64``
length per frame, then the frames back to back. :func:`encode_frames` prepends the header
to the frames without copying them.

:class:`FrameDecoder` is sans-IO: it is fed bytes and returns the messages they complete.
It validates every declaration (frame count, each frame's length, the message total)
against its limits *before* allocating anything for it, so a hostile or confused peer
(say, an HTTP client) is rejected on its first bytes. Each frame is received into its own
``bytearray`` (an anonymous memory map when large) and handed out as a writable
``memoryview``; a message lying wholly in the input is decoded in one step. For asyncio's
``BufferedProtocol`` the decoder also offers :meth:`FrameDecoder.get_buffer` /
:meth:`FrameDecoder.buffer_updated`: while inside a large frame the socket receives
straight into that frame's buffer (no copy at all); the header and small frames go
through a reusable scratch buffer and are copied out. A transport may pass its own
``allocate`` for those buffers (the TCP comm pages large ones in on a helper thread).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable, Sequence

from conveyor.protocol.errors import ProtocolError

__all__ = [
    "DIRECT_RECEIVE_THRESHOLD",
    "FrameDecoder",
    "allocate_frame",
    "encode_frames",
    "format_bytes",
    "frame_lengths",
    "pack_header",
]

#: Frames with at least this many bytes still to receive are received in place.
DIRECT_RECEIVE_THRESHOLD = 64 * 1024
_SCRATCH_SIZE = 64 * 1024
_MMAP_THRESHOLD = 1024 * 1024

_COUNT = struct.Struct("<I")
_LENGTH_SIZE = 8

# Decoder stages.
_READ_COUNT = 0
_READ_LENGTHS = 1
_READ_BODY = 2


def format_bytes(n: int) -> str:
    """Return a short human-readable size, e.g. ``"512.00 MiB"``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def allocate_frame(nbytes: int) -> memoryview:
    """Return a writable buffer of ``nbytes`` (the decoder's default allocator).

    Large buffers are anonymous memory maps: that spares the pass over the whole buffer
    that zero-filling a ``bytearray`` costs in Python (as much time as receiving the data
    over loopback). Transports that can bound it page them in ahead of the data
    (:mod:`conveyor.comm.prefault`).
    """
    if nbytes >= _MMAP_THRESHOLD:
        # not MAP_POPULATE: a peer could declare frames and send nothing, and the memory
        # would be taken all the same
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        return memoryview(mmap.mmap(-1, nbytes, flags=flags))
    return memoryview(bytearray(nbytes))


def frame_lengths(frames: Sequence[bytes | bytearray | memoryview]) -> list[int]:
    """Return the size in bytes of each frame."""
    return [f.nbytes if isinstance(f, memoryview) else len(f) for f in frames]


def pack_header(lengths: Sequence[int]) -> bytes:
    """Return the wire header for a message whose frames have these ``lengths``."""
    if not lengths:
        raise ValueError("A message needs at least one frame")
    return struct.pack(f"<I{len(lengths)}Q", len(lengths), *lengths)


def encode_frames(
    frames: Sequence[bytes | bytearray | memoryview],
) -> list[bytes | memoryview]:
    """Return the header followed by ``frames``, ready for ``transport.writelines``.

    The frames themselves are not copied (a ``bytearray`` is wrapped in a ``memoryview``).
    """
    header = pack_header(frame_lengths(frames))
    out: list[bytes | memoryview] = [header]
    for frame in frames:
        out.append(memoryview(frame) if isinstance(frame, bytearray) else frame)
    return out


class FrameDecoder:
    """Incrementally decode framed messages from a byte stream (sans-IO).

    ``max_frame_size`` caps each frame, ``max_frames`` the frame count and
    ``max_message_size`` (if given) the sum of a message's frame lengths. Declarations
    beyond a limit raise :class:`ProtocolError` before any allocation; after an error the
    decoder stays failed.
    """

    __slots__ = (
        "_allocate",
        "_direct",
        "_failed",
        "_filled",
        "_frame_view",
        "_frames",
        "_header",
        "_index",
        "_lengths",
        "_need",
        "_progress",
        "_scratch",
        "_stage",
        "max_frame_size",
        "max_frames",
        "max_message_size",
    )

    def __init__(
        self,
        max_frame_size: int,
        max_frames: int = 10_000,
        max_message_size: int | None = None,
        allocate: Callable[[int], memoryview] = allocate_frame,
        progress: Callable[[memoryview, int], None] | None = None,
    ) -> None:
        if max_frame_size < 0 or max_frames < 1:
            raise ValueError("max_frame_size must be >= 0 and max_frames >= 1")
        self.max_frame_size = max_frame_size
        self.max_frames = max_frames
        self.max_message_size = max_message_size
        #: makes the buffer a frame is received into (see allocate_frame)
        self._allocate = allocate
        #: told ``(buffer, bytes received)`` as a large frame arrives directly into its
        #: buffer (conveyor.comm.prefault pages the buffer in behind the data)
        self._progress = progress
        self._scratch = memoryview(bytearray(_SCRATCH_SIZE))
        self._direct = False
        self._failed: ProtocolError | None = None
        self._stage = _READ_COUNT
        self._header = bytearray()  # partial header bytes when split across feeds
        self._need = _COUNT.size  # header bytes needed by the current stage
        self._lengths: tuple[int, ...] = ()
        self._frames: list[memoryview] = []
        self._index = 0  # index of the frame being received
        self._frame_view: memoryview | None = None  # that frame, once allocated
        self._filled = 0  # bytes of that frame received so far

    @property
    def mid_message(self) -> bool:
        """True if part of a message has been received but not all of it."""
        return self._stage != _READ_COUNT or bool(self._header)

    def feed(self, data: bytes | bytearray | memoryview) -> list[list[memoryview]]:
        """Consume ``data`` and return every message it completes (possibly none)."""
        self._check_failed()
        view = memoryview(data)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        out: list[list[memoryview]] = []
        pos = 0
        end = view.nbytes
        try:
            while pos < end:
                if self._stage == _READ_COUNT and not self._header:
                    done = self._feed_whole_message(view, pos, end, out)
                    if done:
                        pos = done
                        continue
                if self._stage == _READ_BODY:
                    pos = self._feed_body(view, pos, end, out)
                else:
                    pos = self._feed_header(view, pos, end, out)
        except ProtocolError as e:
            self._failed = e
            raise
        return out

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Return a non-empty writable buffer for the next received bytes.

        Inside a large frame this is a view into the frame itself; otherwise it is a
        reusable scratch buffer. Follow with :meth:`buffer_updated`.
        """
        if self._stage == _READ_BODY and self._failed is None:
            length = self._lengths[self._index]
            if length - self._filled >= DIRECT_RECEIVE_THRESHOLD:
                if self._frame_view is None:
                    self._frame_view = self._allocate(length)
                self._direct = True
                return self._frame_view[self._filled :]
        self._direct = False
        return self._scratch

    def buffer_updated(self, nbytes: int) -> list[list[memoryview]]:
        """Note that ``nbytes`` were written into the last :meth:`get_buffer` buffer.

        Returns every message completed by them.
        """
        if not self._direct:
            return self.feed(self._scratch[:nbytes])
        self._direct = False
        self._filled += nbytes
        if self._progress is not None:
            assert self._frame_view is not None
            self._progress(self._frame_view, self._filled)
        out: list[list[memoryview]] = []
        if self._filled == self._lengths[self._index]:
            self._complete_frame(out)
        return out

    def close(self) -> None:
        """The stream ended: let go of a message received in part (its buffers are
        freed now, not at the next garbage collection); later input raises."""
        self._frame_view = None
        self._frames = []
        if self._failed is None:
            self._failed = ProtocolError("the stream was closed")

    def _check_failed(self) -> None:
        if self._failed is not None:
            raise ProtocolError(f"Decoder already failed: {self._failed}")

    def _feed_whole_message(
        self, view: memoryview, pos: int, end: int, out: list[list[memoryview]]
    ) -> int:
        """Fast path: decode one message lying entirely in ``view[pos:end]``.

        Returns the position after it, or 0 (having changed nothing) if it is incomplete.
        """
        if end - pos < _COUNT.size:
            return 0
        nframes: int = _COUNT.unpack_from(view, pos)[0]
        self._check_count(nframes)
        start = pos + _COUNT.size + nframes * _LENGTH_SIZE
        if start > end:
            return 0
        lengths = struct.unpack_from(f"<{nframes}Q", view, pos + _COUNT.size)
        self._check_lengths(lengths)
        if start + sum(lengths) > end:
            return 0
        frames = []
        for length in lengths:
            frames.append(memoryview(bytearray(view[start : start + length])))
            start += length
        out.append(frames)
        return start

    def _feed_header(
        self, view: memoryview, pos: int, end: int, out: list[list[memoryview]]
    ) -> int:
        need = self._need - len(self._header)
        if not self._header and end - pos >= need:
            self._on_header(view, pos, out)  # whole header available: parse in place
            return pos + need
        take = min(need, end - pos)
        self._header += view[pos : pos + take]
        if len(self._header) == self._need:
            header = bytes(self._header)
            self._header.clear()
            self._on_header(header, 0, out)
        return pos + take

    def _on_header(self, buf: bytes | memoryview, offset: int, out: list[list[memoryview]]) -> None:
        if self._stage == _READ_COUNT:
            (nframes,) = _COUNT.unpack_from(buf, offset)
            self._check_count(nframes)
            self._stage = _READ_LENGTHS
            self._need = nframes * _LENGTH_SIZE
        else:
            nframes = self._need // _LENGTH_SIZE
            lengths = struct.unpack_from(f"<{nframes}Q", buf, offset)
            self._check_lengths(lengths)
            self._lengths = lengths
            self._frames = []
            self._index = 0
            self._stage = _READ_BODY
            self._advance(out)

    def _check_count(self, nframes: int) -> None:
        if nframes == 0:
            raise ProtocolError("Message declares zero frames")
        if nframes > self.max_frames:
            raise ProtocolError(
                f"Message declares {nframes} frames, exceeding limit {self.max_frames}"
            )

    def _check_lengths(self, lengths: tuple[int, ...]) -> None:
        biggest = max(lengths)
        if biggest > self.max_frame_size:
            raise ProtocolError(
                f"frame of {format_bytes(biggest)} exceeds limit "
                f"{format_bytes(self.max_frame_size)}"
            )
        if self.max_message_size is not None:
            total = sum(lengths)
            if total > self.max_message_size:
                raise ProtocolError(
                    f"message of {format_bytes(total)} exceeds limit "
                    f"{format_bytes(self.max_message_size)}"
                )

    def _feed_body(self, view: memoryview, pos: int, end: int, out: list[list[memoryview]]) -> int:
        length = self._lengths[self._index]
        if self._frame_view is None:
            if end - pos >= length:  # whole frame available: one copy, no zero-fill
                self._frame_view = memoryview(bytearray(view[pos : pos + length]))
                self._filled = length
                self._complete_frame(out)
                return pos + length
            self._frame_view = self._allocate(length)
        take = min(length - self._filled, end - pos)
        self._frame_view[self._filled : self._filled + take] = view[pos : pos + take]
        self._filled += take
        if self._progress is not None:
            self._progress(self._frame_view, self._filled)
        if self._filled == length:
            self._complete_frame(out)
        return pos + take

    def _complete_frame(self, out: list[list[memoryview]]) -> None:
        assert self._frame_view is not None
        self._frames.append(self._frame_view)
        self._frame_view = None
        self._filled = 0
        self._index += 1
        self._advance(out)

    def _advance(self, out: list[list[memoryview]]) -> None:
        """Take empty frames as received; emit the message once all frames are in."""
        lengths = self._lengths
        while self._index < len(lengths) and lengths[self._index] == 0:
            self._frames.append(memoryview(bytearray()))
            self._index += 1
        if self._index == len(lengths):
            out.append(self._frames)
            self._frames = []
            self._lengths = ()
            self._index = 0
            self._stage = _READ_COUNT
            self._need = _COUNT.size
