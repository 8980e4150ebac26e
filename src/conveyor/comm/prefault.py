"""Buffers for large incoming frames, paged in ahead of the data, within bounds.

A fresh anonymous mapping costs the kernel a zeroed page per 4 KiB on first write, and
taking those faults one by one as the data lands costs receiving a third of its speed.
Paging a buffer in up front is cheaper, but it takes the memory before the data comes:
a peer could declare frames and send nothing. So the memory paged in ahead of the data
is bounded, in two ways:

* A frame of at least :data:`PREFAULT_THRESHOLD` is paged in by one daemon thread
  (``madvise(MADV_POPULATE_WRITE)``, Linux 5.14+, called through ctypes, which releases
  the GIL) a few MiB at a time while the event loop receives into the same buffer. It
  stays ahead of the bytes received (the decoder reports them through
  :func:`receive_progress`) by no more than were received, and at most :data:`WINDOW`.
  Paging in never changes a byte already there, so whichever side touches a page
  first, the data is the same. A buffer whose data stops coming is parked, and
  referred to only weakly, so a dropped connection frees it.
* A smaller frame (from 1 MiB), or any frame where that call is missing, is paged in
  when it is made (``MAP_POPULATE``) while the frames paged in but not yet received
  total at most :data:`POPULATE_BUDGET` in this process; beyond that it is paged as the
  data arrives.

A peer that declares a 1 GiB frame and sends a few bytes of it costs this process those
bytes (at most twice over) and a share of the budget, not the gigabyte. Below 1 MiB a
frame's buffer is a zeroed bytearray, taken whole when its first bytes arrive: at most
1 MiB per connection (``conveyor.comm.max-connections`` bounds those).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import queue
import sys
import threading
import weakref
from collections.abc import Callable

from conveyor.protocol.framing import allocate_frame

logger = logging.getLogger("conveyor.comm")

#: frames from this size are mapped; smaller ones are bytearrays, zeroed when made (a
#: map and its bookkeeping would halve the speed of 100 kB messages), so one of those
#: costs its size when its first bytes arrive: at most 1 MiB per connection
MMAP_THRESHOLD = 1024 * 1024
#: frames at least this large are paged in by the helper thread, where it can
PREFAULT_THRESHOLD = 8 * 1024 * 1024
#: bytes paged in per call: small enough that the receiver rarely waits on one
_STEP = 4 * 1024 * 1024
#: how far ahead of the bytes received the thread may page a buffer in, at most
WINDOW = 4 * _STEP
#: bytes of frames paged in when made and not yet received, at most, in this process
POPULATE_BUDGET = 64 * 1024 * 1024
_MADV_POPULATE_WRITE = 23
_MAP_POPULATE: int = getattr(mmap, "MAP_POPULATE", 0)


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


class _Job:
    """A buffer being received: ``paged`` bytes of it are paged in by the thread, up to
    ``allowed`` may be; ``charged`` is its share of the populate budget."""

    __slots__ = ("allowed", "buffer", "charged", "paged", "queued")

    def __init__(self, buffer: mmap.mmap, charged: int = 0) -> None:
        self.buffer = weakref.ref(buffer)  # the receiver owns it; the job must not
        self.paged = 0
        self.allowed = 0  # nothing received yet
        self.queued = False  # in the thread's queue, or being paged in by it
        self.charged = charged


class _Prefaulter:
    """Makes receive buffers; one daemon thread pages in the large ones, oldest first."""

    def __init__(self) -> None:
        self._madvise = _madvise()
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        #: the job of each buffer still being received, by buffer
        self._jobs: weakref.WeakKeyDictionary[mmap.mmap, _Job] = weakref.WeakKeyDictionary()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        #: guards ``populated``; reentrant, as a buffer's finalizer may run (in a garbage
        #: collection) on a thread that holds it
        self._lock = threading.RLock()
        #: bytes of the populate budget taken
        self.populated = 0

    @property
    def supported(self) -> bool:
        """Whether the helper thread can page buffers in (else up front, in budget)."""
        return self._madvise is not None

    def allocate(self, nbytes: int) -> memoryview:
        if nbytes < MMAP_THRESHOLD:
            return allocate_frame(nbytes)
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        if nbytes >= PREFAULT_THRESHOLD and self._madvise is not None:
            buffer = mmap.mmap(-1, nbytes, flags=flags)
            self._start()
            self._jobs[buffer] = _Job(buffer)  # queued once data arrives (progress)
            return memoryview(buffer)
        if not _MAP_POPULATE or not self._reserve(nbytes):
            return memoryview(mmap.mmap(-1, nbytes, flags=flags))
        buffer = mmap.mmap(-1, nbytes, flags=flags | _MAP_POPULATE)
        job = self._jobs[buffer] = _Job(buffer, charged=nbytes)
        weakref.finalize(buffer, self._release, job)  # a connection dropped mid-frame
        return memoryview(buffer)

    def progress(self, view: memoryview, received: int) -> None:
        """``received`` bytes of the buffer behind ``view`` have arrived (event loop)."""
        buffer = view.obj
        if type(buffer) is not mmap.mmap or (job := self._jobs.get(buffer)) is None:
            return
        if job.charged:
            if received >= len(buffer):
                self._release(job)
            return
        allowed = received + min(received, WINDOW)
        job.allowed = allowed - allowed % _STEP  # whole steps, page-aligned
        if not job.queued and job.paged < job.allowed:
            job.queued = True
            self._queue.put(job)

    def _reserve(self, nbytes: int) -> bool:
        with self._lock:
            if self.populated + nbytes > POPULATE_BUDGET:
                return False
            self.populated += nbytes
            return True

    def _release(self, job: _Job) -> None:
        with self._lock:
            self.populated -= job.charged
            job.charged = 0

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="conveyor-prefault", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            buffer = job.buffer()
            if buffer is None:  # its connection is gone
                continue
            try:
                self._page_in(job, buffer)
            except Exception:  # never fatal: the receiver faults the pages in itself
                logger.exception("Paging in a receive buffer failed")
            del buffer

    def _page_in(self, job: _Job, buffer: mmap.mmap) -> None:
        madvise = self._madvise
        if madvise is None:
            return
        anchor = ctypes.c_char.from_buffer(buffer)  # an export: pins the mapping
        try:
            address, size = ctypes.addressof(anchor), len(buffer)
            while job.paged < size:
                end = min(size, job.allowed)
                if job.paged >= end:
                    job.queued = False  # progress() queues it again once data arrives
                    if job.allowed <= job.paged:  # and none arrived meanwhile
                        return
                    job.queued = True  # it did: go on (if queued twice, no matter)
                    continue
                n = min(_STEP, end - job.paged)
                if madvise(address + job.paged, n, _MADV_POPULATE_WRITE):
                    if ctypes.get_errno() == errno.EINVAL:  # a kernel without it
                        self._madvise = None
                    return
                job.paged += n
        finally:
            del anchor


_prefaulter = _Prefaulter()


def receive_buffer(nbytes: int) -> memoryview:
    """A writable buffer of ``nbytes`` for an incoming frame, paged in ahead of the data
    within the bounds above."""
    return _prefaulter.allocate(nbytes)


def receive_progress(view: memoryview, received: int) -> None:
    """The decoder received ``received`` bytes of the frame buffer ``view`` so far (all
    of it, at the end)."""
    _prefaulter.progress(view, received)


def populated_bytes() -> int:
    """Bytes of frames paged in when made whose data has not all arrived (for tests)."""
    return _prefaulter.populated
