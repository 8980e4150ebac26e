"""Receive buffers paged in ahead of the data, within bounds: data already received is
never touched, a declared frame whose data does not come costs (almost) nothing, and
frames paged in up front share a budget that received or dropped frames give back."""

from __future__ import annotations

import ctypes
import errno
import gc
import mmap
import threading

import psutil
import pytest

from conveyor.comm.prefault import (
    MMAP_THRESHOLD,
    POPULATE_BUDGET,
    PREFAULT_THRESHOLD,
    WINDOW,
    _Job,
    _Prefaulter,
    receive_buffer,
)
from conveyor.protocol.framing import FrameDecoder, encode_frames

needs_madvise = pytest.mark.skipif(
    not _Prefaulter().supported, reason="no madvise(MADV_POPULATE_WRITE) here"
)
MiB = 1024 * 1024


def test_small_frames_use_the_default_buffers() -> None:
    small = receive_buffer(1000)
    assert isinstance(small.obj, bytearray) and len(small) == 1000
    large = receive_buffer(PREFAULT_THRESHOLD)
    assert isinstance(large.obj, mmap.mmap) and len(large) == PREFAULT_THRESHOLD
    large[-1] = 7
    assert large[-1] == 7 and large[0] == 0


@needs_madvise
def test_paging_in_keeps_bytes_already_received_and_zeroes_the_rest() -> None:
    prefaulter = _Prefaulter()
    size = 3 * PREFAULT_THRESHOLD + 12345  # not a multiple of the step
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = memoryview(buffer)
    marks = {0: 1, 4096 * 3 + 5: 2, size // 2: 3, size - 1: 4}
    for at, value in marks.items():  # the receiver got here first
        view[at] = value
    job = _Job(buffer)
    job.allowed = size
    prefaulter._page_in(job, buffer)
    assert prefaulter.supported and job.paged == size  # the kernel took every call
    assert {at: view[at] for at in marks} == marks
    assert bytes(view[1:4096]) == bytes(4095) and view[size - 2] == 0
    view.release()
    buffer.close()  # the helper let go of the mapping


@needs_madvise
def test_the_thread_pages_in_no_further_than_allowed() -> None:
    prefaulter = _Prefaulter()
    buffer = mmap.mmap(-1, 64 * MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    job = _Job(buffer)
    job.allowed = 8 * MiB
    job.queued = True
    prefaulter._page_in(job, buffer)
    assert job.paged == 8 * MiB and not job.queued  # parked: progress() queues it again
    buffer.close()


def test_a_kernel_without_the_call_turns_the_helper_off() -> None:
    prefaulter = _Prefaulter()
    calls: list[int] = []

    def refusing(address: int, length: int, advice: int) -> int:
        calls.append(length)
        ctypes.set_errno(errno.EINVAL)
        return -1

    prefaulter._madvise = refusing
    buffer = mmap.mmap(-1, 2 * PREFAULT_THRESHOLD, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    job = _Job(buffer)
    job.allowed = len(buffer)
    prefaulter._page_in(job, buffer)
    assert len(calls) == 1 and not prefaulter.supported
    fallback = prefaulter.allocate(PREFAULT_THRESHOLD)  # paged in up front, in budget
    assert isinstance(fallback.obj, mmap.mmap) and len(fallback) == PREFAULT_THRESHOLD
    assert prefaulter.populated == PREFAULT_THRESHOLD
    buffer.close()


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _feed_declared(size: int, received: int) -> tuple[FrameDecoder, memoryview]:
    """A decoder with receive buffers that has the header of one ``size`` frame and
    ``received`` bytes of it, received as a transport receives them."""
    from conveyor.comm.prefault import receive_progress

    decoder = FrameDecoder(2**31, 10, None, receive_buffer, receive_progress)
    header = bytes(encode_frames([b""])[0])[:4] + size.to_bytes(8, "little")
    assert decoder.feed(header) == []
    got = 0
    while got < received:
        buf = decoder.get_buffer()
        n = min(len(buf), received - got)
        buf[:n] = b"\x01" * n
        assert decoder.buffer_updated(n) == []
        got += n
    view = decoder._frame_view
    assert view is not None
    return decoder, view


@needs_madvise
def test_a_declared_frame_costs_what_arrived_not_what_was_declared() -> None:
    before = _rss()
    _, view = _feed_declared(512 * MiB, 10)
    job = _job_of(view)
    _wait_idle(job)
    assert job.paged == 0
    assert _rss() - before < 8 * MiB
    # after 40 MiB: at most 40 MiB more paged in ahead (and never beyond WINDOW)
    _, view = _feed_declared(512 * MiB, 40 * MiB)
    job = _job_of(view)
    _wait_idle(job)
    assert 40 * MiB <= job.paged <= 40 * MiB + WINDOW
    assert _rss() - before < 40 * MiB + WINDOW + 16 * MiB


def _job_of(view: memoryview) -> _Job:
    from conveyor.comm import prefault

    job = prefault._prefaulter._jobs.get(view.obj)  # type: ignore[arg-type]
    assert job is not None
    return job


def _wait_idle(job: _Job) -> None:
    """Wait until the helper thread has done what it may with ``job``: it is idle once
    it takes (and finishes) a marker job queued behind it."""
    from conveyor.comm import prefault

    done = threading.Event()
    marker = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    probe = _Job(marker)
    probe.allowed = 4096
    real = prefault._prefaulter._page_in

    def page_in(j: _Job, buffer: mmap.mmap) -> None:
        real(j, buffer)
        if j is probe:
            done.set()

    prefault._prefaulter._page_in = page_in  # type: ignore[method-assign]
    try:
        prefault._prefaulter._queue.put(probe)
        assert done.wait(10)
    finally:
        del prefault._prefaulter._page_in
        marker.close()


def test_frames_paged_in_up_front_share_a_budget_given_back_when_received() -> None:
    prefaulter = _Prefaulter()
    prefaulter._madvise = None  # every frame from 1 MiB is paged in up front, in budget
    size = 4 * MiB
    views = [prefaulter.allocate(size) for _ in range(POPULATE_BUDGET // size + 3)]
    assert prefaulter.populated == POPULATE_BUDGET  # the last three: paged as data comes
    charged = [v for v in views if v.obj in prefaulter._jobs]
    assert len(charged) == POPULATE_BUDGET // size
    prefaulter.progress(charged[0], size // 2)  # half received: still charged
    assert prefaulter.populated == POPULATE_BUDGET
    prefaulter.progress(charged[0], size)  # all of it: given back
    assert prefaulter.populated == POPULATE_BUDGET - size
    # a connection dropped mid-frame: its buffer is freed, and gives its share back
    del charged, views
    gc.collect()
    assert prefaulter.populated == 0
    assert prefaulter.allocate(MMAP_THRESHOLD - 1).obj.__class__ is bytearray


def test_a_stream_closed_mid_frame_gives_its_share_back_at_once() -> None:
    from conveyor.comm.prefault import populated_bytes

    before = populated_bytes()
    gc.disable()  # given back when the connection ends, not at some later collection
    try:
        decoder, view = _feed_declared(4 * MiB, 100_000)
        if populated_bytes() == before:
            pytest.skip("the populate budget is taken by frames of other tests")
        assert populated_bytes() == before + 4 * MiB
        del view
        decoder.close()
        assert populated_bytes() == before
        with pytest.raises(Exception, match="closed"):
            decoder.feed(b"x")
    finally:
        gc.enable()
