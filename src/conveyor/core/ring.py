"""The placement ring: every worker, in the order they take turns being weighed.

Placement samples a window of consecutive members (``SchedulerTransitions._some_workers``)
starting where the last window ended, so that over successive decisions every worker is
weighed. Members join at the end in O(1); one leaves in O(1) too: the last member takes
its place (swap-remove). That reorders the ring a little on each departure (the moved
worker is weighed a turn earlier or later than it would have been), which keeps what a
window is (consecutive, rotating, every member in turn) without an O(workers) list
removal on every worker that leaves.
"""

from __future__ import annotations

from collections.abc import Iterator

from conveyor.core.records import WorkerInfo


class Ring:
    """Workers indexable by position, with O(1) append and O(1) removal."""

    __slots__ = ("_at", "members")

    def __init__(self) -> None:
        #: the members, by position (read it; change it only through this class)
        self.members: list[WorkerInfo] = []
        #: address -> position in ``members``
        self._at: dict[str, int] = {}

    def append(self, ws: WorkerInfo) -> None:
        """Add ``ws`` at the end; ValueError if a worker of its address is a member."""
        if ws.address in self._at:
            raise ValueError(f"{ws.address!r} is in the ring already")
        self._at[ws.address] = len(self.members)
        self.members.append(ws)

    def remove(self, ws: WorkerInfo) -> None:
        """Take ``ws`` out (the last member moves into its place); ValueError if it is
        not a member."""
        i = self._at.get(ws.address)
        if i is None or self.members[i] is not ws:
            raise ValueError(f"{ws!r} is not in the ring")
        del self._at[ws.address]
        last = self.members.pop()
        if last is not ws:
            self.members[i] = last
            self._at[last.address] = i

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[WorkerInfo]:
        return iter(self.members)

    def __getitem__(self, i: int) -> WorkerInfo:
        return self.members[i]

    def consistent(self) -> bool:
        """Whether the position index matches the members (for the invariant checks)."""
        return len(self._at) == len(self.members) and all(
            self._at.get(ws.address) == i for i, ws in enumerate(self.members)
        )
