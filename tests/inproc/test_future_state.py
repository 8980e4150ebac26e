"""Waiting on many future states at once."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.client.future import FutureState, all_settled


def test_all_settled_waits_for_every_state_with_one_callback_each() -> None:
    async def main() -> None:
        states = [FutureState(f"k-{i}") for i in range(5)]
        states[0].finish("int", ["w"])  # done before: not waited on
        waiter = asyncio.ensure_future(all_settled(states))
        await asyncio.sleep(0)
        assert [len(st.callbacks) for st in states] == [0, 1, 1, 1, 1]
        for st in states[1:4]:
            st.finish("int", ["w"])
        await asyncio.sleep(0)
        assert not waiter.done()
        states[4].set_error(None, None, "ValueError: x", "")
        await asyncio.wait_for(waiter, 5)

    asyncio.run(main())


def test_giving_up_leaves_no_callbacks_behind() -> None:
    async def main() -> None:
        states = [FutureState("a"), FutureState("b")]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(all_settled(states), 0.01)
        assert all(st.callbacks == [] for st in states)
        await all_settled([])  # nothing to wait for

    asyncio.run(main())
