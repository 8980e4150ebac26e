"""Buffers for large incoming frames, paged in by a helper thread while data arrives.

A fresh anonymous mapping costs the kernel a zeroed page per 4 KiB on first write. The
decoder's default (``MAP_POPULATE``) pays all of it before the first byte is received:
about 50 ms per 200 MB, while the sender sits blocked on a full socket buffer. Here the
mapping is made without it, and one daemon thread asks the kernel to page it in
(``madvise(MADV_POPULATE_WRITE)``, Linux 5.14+) a few MiB at a time, from the start,
while the event loop receives into the same buffer behind or ahead of it. Paging in
never changes a byte that is already there, so whichever side touches a page first, the
data is the same; the thread only takes page faults off the receiving thread. The
thread calls ``madvise`` through ctypes, which releases the GIL.

Where the call is missing (not Linux, an older kernel), :func:`receive_buffer` is the
decoder's default allocator.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import queue
import sys
import threading
from collections.abc import Callable

from conveyor.protocol.framing import allocate_frame

logger = logging.getLogger("conveyor.comm")

#: frames at least this large are paged in by the helper thread
PREFAULT_THRESHOLD = 8 * 1024 * 1024
#: bytes paged in per call: small enough that the receiver rarely waits on one
_STEP = 4 * 1024 * 1024
_MADV_POPULATE_WRITE = 23


_Madvise = Callable[[int, int, int], int]


def _madvise() -> _Madvise | None:
    if sys.platform != "linux" or not hasattr(mmap, "MAP_ANONYMOUS"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    madvise: _Madvise = fn
    return madvise


class _Prefaulter:
    """One daemon thread paging in the buffers handed to it, oldest first."""

    def __init__(self) -> None:
        self._madvise = _madvise()
        self._jobs: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def supported(self) -> bool:
        return self._madvise is not None

    def allocate(self, nbytes: int) -> memoryview:
        if nbytes < PREFAULT_THRESHOLD or self._madvise is None:
            return allocate_frame(nbytes)
        buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._start()
        self._jobs.put(buffer)  # the job holds the mapping: it cannot be unmapped meanwhile
        return memoryview(buffer)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="conveyor-prefault", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            buffer = self._jobs.get()
            try:
                self._page_in(buffer)
            except Exception:  # never fatal: the receiver faults the pages in itself
                logger.exception("Paging in a receive buffer failed")
            del buffer

    def _page_in(self, buffer: mmap.mmap) -> None:
        madvise = self._madvise
        if madvise is None:
            return
        anchor = ctypes.c_char.from_buffer(buffer)  # an export: pins the mapping
        try:
            address, size = ctypes.addressof(anchor), len(buffer)
            for offset in range(0, size, _STEP):
                if madvise(address + offset, min(_STEP, size - offset), _MADV_POPULATE_WRITE):
                    if ctypes.get_errno() == errno.EINVAL:  # a kernel without it
                        self._madvise = None
                    return
        finally:
            del anchor


_prefaulter = _Prefaulter()


def receive_buffer(nbytes: int) -> memoryview:
    """A writable buffer of ``nbytes`` for an incoming frame; large ones are paged in
    by the helper thread as the data arrives."""
    return _prefaulter.allocate(nbytes)
