"""Which task each of a worker's threads is running, in a file its nanny reads after
the worker process ended.

When a worker process dies, the scheduler must tell the task that killed it from the
tasks that were only waiting there (:mod:`conveyor.core.deaths`). A message sent as a
task starts could be lost with the process, if the task kills it at once; so each task
thread writes the key of the task it starts into its own slot of a small memory-mapped
file *before* calling the task, and clears the slot after. The writes land in the
kernel's page cache, which outlives the process; the nanny reads the file once the
process has ended and reports the keys it finds.

The file also holds the worker's address, written as soon as it listens: a worker
that a task kills moments after it registered, before it could tell its nanny it is up,
is still known to the nanny as a worker that died (and is replaced), not as one that
failed to start.

Layout: a header (magic number, flags, the address), then fixed-size slots of a length
(0: empty) and the msgpack-encoded key. A key is written before its length, and the length is
cleared first, so a slot is never read half-written. A key too long for a slot, or a
thread that found no free slot, sets a flag that makes the record *incomplete*: the
nanny then reports that it does not know, and the scheduler blames every task the
worker had.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from typing import Any, NamedTuple

import msgpack

__all__ = ["Running", "RunningFile", "read_running"]

_FLAGS = struct.Struct("<II")  # magic, flags
_LENGTH = struct.Struct("<I")
_MAGIC = 0x434F4E56  # "CONV"
_INCOMPLETE = 1
_SLOT = 256
_KEY_ROOM = _SLOT - _LENGTH.size
_ADDRESS_AT = _FLAGS.size
_ADDRESS_ROOM = _SLOT - _FLAGS.size - _LENGTH.size
_HEADER_SIZE = _SLOT  # flags, then the address as a slot holds a key


class Running(NamedTuple):
    """What a worker process's file says: its address ("" before it listened) and the
    keys of the tasks its threads were running (None if not known)."""

    address: str
    executing: list[Any] | None


class RunningFile:
    """The worker's side: ``slots`` slots in the file at ``path`` (made by the nanny).

    The mapping lives as long as this object: task threads may still write to it
    while the worker closes.
    """

    def __init__(self, path: str, slots: int) -> None:
        size = _HEADER_SIZE + slots * _SLOT
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, 0)  # nothing left from an earlier worker process
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        _FLAGS.pack_into(self._map, 0, _MAGIC, 0)
        self._free = list(range(slots - 1, -1, -1))
        self._lock = threading.Lock()

    def set_address(self, address: str) -> None:
        """Note the worker's address (once it listens)."""
        data = address.encode()[:_ADDRESS_ROOM]
        at = _ADDRESS_AT + _LENGTH.size
        self._map[at : at + len(data)] = data
        _LENGTH.pack_into(self._map, _ADDRESS_AT, len(data))

    def claim(self) -> int:
        """A slot for the calling thread (-1 if none is left)."""
        with self._lock:
            return self._free.pop() if self._free else -1

    def release(self, slot: int) -> None:
        """Give back a thread's slot, once its thread ends."""
        if slot >= 0:
            self.finished(slot)
            with self._lock:
                self._free.append(slot)

    def started(self, slot: int, key: Any) -> None:
        """The thread owning ``slot`` is about to run the task ``key``."""
        try:
            data = msgpack.packb(key) if slot >= 0 else b""
        except (TypeError, ValueError):  # not a key msgpack can write
            data = b""
        if not data or len(data) > _KEY_ROOM:
            self._incomplete()
            return
        at = _HEADER_SIZE + slot * _SLOT
        self._map[at + _LENGTH.size : at + _LENGTH.size + len(data)] = data
        _LENGTH.pack_into(self._map, at, len(data))

    def finished(self, slot: int) -> None:
        """The thread owning ``slot`` returned from its task."""
        if slot >= 0:
            _LENGTH.pack_into(self._map, _HEADER_SIZE + slot * _SLOT, 0)

    def _incomplete(self) -> None:
        with self._lock:
            _FLAGS.pack_into(self._map, 0, _MAGIC, _INCOMPLETE)


def read_running(path: str) -> Running | None:
    """What the file at ``path`` says; None if it is missing or damaged."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if len(data) < _HEADER_SIZE:
        return None
    magic, flags = _FLAGS.unpack_from(data, 0)
    (length,) = _LENGTH.unpack_from(data, _ADDRESS_AT)
    if magic != _MAGIC or length > _ADDRESS_ROOM:
        return None
    start = _ADDRESS_AT + _LENGTH.size
    address = data[start : start + length].decode(errors="replace")
    if flags & _INCOMPLETE:
        return Running(address, None)
    keys = []
    for at in range(_HEADER_SIZE, len(data) - _SLOT + 1, _SLOT):
        (length,) = _LENGTH.unpack_from(data, at)
        if not length:
            continue
        start = at + _LENGTH.size
        try:
            if length > _KEY_ROOM:
                raise ValueError(length)
            keys.append(msgpack.unpackb(data[start : start + length], use_list=False))
        except Exception:  # a damaged slot: which tasks ran is not known
            return Running(address, None)
    return Running(address, keys)
