"""A priority queue of tasks with O(log n) add, pop and O(1) discard (lazy deletion)."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class _Prioritized(Protocol):
    @property
    def priority(self) -> tuple[float, ...]: ...


T = TypeVar("T", bound=_Prioritized)


class HeapSet(Generic[T]):
    """A set ordered by each item's ``priority``; the smallest comes out first.

    Items must not change priority while inside. Discarded items stay in the heap
    until they surface, so discard is O(1) and the heap is compacted when it is
    mostly dead entries.
    """

    __slots__ = ("_count", "_heap", "_members")

    def __init__(self) -> None:
        self._members: set[T] = set()
        self._heap: list[tuple[tuple[float, ...], int, T]] = []
        self._count = 0

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, item: object) -> bool:
        return item in self._members

    def __iter__(self) -> Iterator[T]:
        return iter(self._members)

    def add(self, item: T) -> None:
        """Insert ``item`` (no-op if present)."""
        if item in self._members:
            return
        self._members.add(item)
        self._count += 1
        heapq.heappush(self._heap, (item.priority, self._count, item))

    def discard(self, item: T) -> None:
        """Remove ``item`` if present."""
        if item not in self._members:
            return
        self._members.discard(item)
        if len(self._heap) > 64 and len(self._heap) > 4 * len(self._members):
            self._heap = [e for e in self._heap if e[2] in self._members]
            heapq.heapify(self._heap)

    def peek(self) -> T:
        """The smallest item, without removing it; KeyError if empty."""
        heap = self._heap
        while heap:
            item = heap[0][2]
            if item in self._members:
                return item
            heapq.heappop(heap)
        raise KeyError("peek from an empty HeapSet")

    def pop(self) -> T:
        """Remove and return the smallest item; KeyError if empty."""
        item = self.peek()
        heapq.heappop(self._heap)
        self._members.discard(item)
        return item

    def sorted(self) -> list[T]:
        """All items in priority order (O(n log n), for diagnostics)."""
        return sorted(self._members, key=lambda t: t.priority)
