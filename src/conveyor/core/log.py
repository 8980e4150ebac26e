"""A bounded transition log stored as columns, for ``story(key)``.

A log of 100,000 tuples costs about 96 bytes an entry; five aligned deques of shared
values cost about 40. The scheduler logs every transition, so this is per-task memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from itertools import repeat

from conveyor.core.types import Key

Entry = tuple[Key, str, str, str, float]


class TransitionLog:
    """The last ``maxlen`` transitions as (key, start, finish, stimulus, time)."""

    __slots__ = ("_finishes", "_keys", "_starts", "_stimuli", "_times", "maxlen")

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self._keys: deque[Key] = deque(maxlen=maxlen)
        self._starts: deque[str] = deque(maxlen=maxlen)
        self._finishes: deque[str] = deque(maxlen=maxlen)
        self._stimuli: deque[str] = deque(maxlen=maxlen)
        self._times: deque[float] = deque(maxlen=maxlen)

    def append(self, key: Key, start: str, finish: str, stimulus: str, now: float) -> None:
        """Record one transition, dropping the oldest once full."""
        self._keys.append(key)
        self._starts.append(start)
        self._finishes.append(finish)
        self._stimuli.append(stimulus)
        self._times.append(now)

    def extend(self, keys: list[Key], start: str, finish: str, stimulus: str, now: float) -> None:
        """Record the same transition of many keys at once."""
        n = len(keys)
        self._keys.extend(keys)
        self._starts.extend(repeat(start, n))
        self._finishes.extend(repeat(finish, n))
        self._stimuli.extend(repeat(stimulus, n))
        self._times.extend(repeat(now, n))

    def __len__(self) -> int:
        return len(self._keys)

    def last_time(self, key: Key, finish: str) -> float | None:
        """When ``key`` last moved to ``finish``, if the log still holds that entry.

        Walks the log from its newest entry: O(length), for diagnostics only.
        """
        columns = (reversed(self._keys), reversed(self._finishes), reversed(self._times))
        for k, f, t in zip(*columns, strict=True):
            if f == finish and k == key:
                return t
        return None

    def __iter__(self) -> Iterator[Entry]:
        return zip(
            self._keys, self._starts, self._finishes, self._stimuli, self._times, strict=True
        )

    def clear(self) -> None:
        """Forget every entry."""
        for column in (self._keys, self._starts, self._finishes, self._stimuli, self._times):
            column.clear()
