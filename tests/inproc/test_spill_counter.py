"""``SpillBuffer.slow_bytes``, the running total of the spilled values' sizes that a
worker's heartbeat reports, equals the sum over the spilled keys after every kind of
move: puts that spill, replacements, reads and loads back, deletions and discards."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from conveyor.server.spill import SpillBuffer
from conveyor.testing.cluster import until


def size(key: Any, value: Any) -> int:
    return len(value)


def total(buf: SpillBuffer) -> int:
    """What the counter must equal: the sum over the spilled keys."""
    return sum(weight for _, weight in buf.slow.values())


def test_counter_equals_the_sum_after_a_mix_of_moves(tmp_path: Path) -> None:
    async def main() -> None:
        buf = SpillBuffer(3000, size, str(tmp_path))
        rng = random.Random(11)
        keys = [f"k{i}" for i in range(12)]
        seen_spilled = 0
        try:
            for step in range(300):
                key = rng.choice(keys)
                move = rng.random()
                if move < 0.45:
                    buf.put(key, b"x" * rng.randrange(100, 900), -1)  # may replace
                elif move < 0.6:
                    if key in buf:
                        assert len(buf[key]) > 0  # a spilled key is read back
                elif move < 0.75:
                    await buf.load([key])  # read back in the helper thread
                elif move < 0.85:
                    buf.discard(key)
                elif move < 0.9:
                    buf.pop(key, None)
                elif move < 0.95:
                    buf.evict(rng.randrange(0, 2000))  # the memory monitor's spill
                else:
                    if key in buf:
                        del buf[key]
                if step % 10 == 0:  # let evictions under way finish
                    await until(lambda: buf.fast_bytes <= max(buf._goal, buf.target or 0))
                assert buf.slow_bytes == total(buf), step
                seen_spilled = max(seen_spilled, len(buf.slow))
            assert seen_spilled > 0  # the mix did spill
            buf.evict(buf.fast_bytes)
            await until(lambda: not buf.fast)
            assert buf.slow_bytes == total(buf) > 0
            buf.clear()
            assert buf.slow_bytes == 0 == len(buf)
        finally:
            buf.close()
        assert buf.slow_bytes == 0

    asyncio.run(main())


def test_counter_without_a_loop(tmp_path: Path) -> None:
    """Outside an event loop a put spills on the spot; reads bring values back."""
    buf = SpillBuffer(1000, size, str(tmp_path))
    try:
        for i in range(5):
            buf[f"k{i}"] = b"y" * 400
        assert set(buf.slow) == {"k0", "k1", "k2"} and buf.slow_bytes == 1200
        assert buf["k0"] == b"y" * 400  # back in memory; k3 goes out to make room
        assert buf.slow_bytes == total(buf) == 1200
        buf.discard("k1")
        assert buf.slow_bytes == total(buf) == 800
        buf["k2"] = b"z" * 10  # replacing a spilled key
        assert buf.slow_bytes == total(buf)
    finally:
        buf.close()
    assert buf.slow_bytes == 0
