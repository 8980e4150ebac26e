"""Receive buffers paged in by a helper thread: data already received is never touched."""

from __future__ import annotations

import ctypes
import errno
import mmap

import pytest

from conveyor.comm.prefault import PREFAULT_THRESHOLD, _Prefaulter, receive_buffer

needs_madvise = pytest.mark.skipif(
    not _Prefaulter().supported, reason="no madvise(MADV_POPULATE_WRITE) here"
)


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
    prefaulter._page_in(buffer)
    assert prefaulter.supported  # the kernel took the call
    assert {at: view[at] for at in marks} == marks
    assert bytes(view[1:4096]) == bytes(4095) and view[size - 2] == 0
    view.release()
    buffer.close()  # the helper let go of the mapping


def test_a_kernel_without_the_call_turns_the_helper_off() -> None:
    prefaulter = _Prefaulter()
    calls: list[int] = []

    def refusing(address: int, length: int, advice: int) -> int:
        calls.append(length)
        ctypes.set_errno(errno.EINVAL)
        return -1

    prefaulter._madvise = refusing
    buffer = mmap.mmap(-1, 2 * PREFAULT_THRESHOLD, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    prefaulter._page_in(buffer)
    assert len(calls) == 1 and not prefaulter.supported
    fallback = prefaulter.allocate(PREFAULT_THRESHOLD)  # the decoder's default now
    assert isinstance(fallback.obj, mmap.mmap) and len(fallback) == PREFAULT_THRESHOLD
    buffer.close()
