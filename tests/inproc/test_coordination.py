"""Tier 2: Lock, Semaphore, Event, Variable and Queue between asynchronous clients over
tcp, against in-process servers."""

from __future__ import annotations

import asyncio
import inspect
import pickle
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from conveyor import Client, Event, Lock, Queue, Semaphore, Variable
from conveyor.server.scheduler import Scheduler
from conveyor.testing.cluster import in_process_cluster, until


def inc(x: int) -> int:
    return x + 1


def run(coro_fn: Any, **kwargs: Any) -> None:
    async def main() -> None:
        async with in_process_cluster(**kwargs) as (s, workers, client):
            await coro_fn(s, workers, client)

    asyncio.run(main())


@asynccontextmanager
async def other_client(s: Scheduler) -> AsyncIterator[Client]:
    async with Client(s.address, asynchronous=True, set_as_default=False) as c:
        yield c


def coordination(s: Scheduler) -> Any:
    return s.extensions["coordination"]


def n_waiting(s: Scheduler, store: str, name: str, kind: str = "waiters") -> int:
    """How many requests wait on the named primitive (0 if it does not exist)."""
    record = getattr(coordination(s), store).get(name)
    return 0 if record is None else len(getattr(record, kind))


# ------------------------------------------------------------------ locks


def test_lock_excludes_across_clients() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        async with other_client(s) as c2:
            inside = peak = 0
            order: list[int] = []

            async def use(client: Client, who: int) -> None:
                nonlocal inside, peak
                lock = Lock("shared", client=client)
                for _ in range(5):
                    async with lock:
                        inside += 1
                        peak = max(peak, inside)
                        await client.scheduler_info()  # a round trip while holding it
                        order.append(who)
                        inside -= 1

            await asyncio.gather(*(use(cl, i) for i, cl in enumerate([c, c2, c, c2])))
            assert peak == 1
            assert sorted(order) == sorted([0, 1, 2, 3] * 5)
            assert not coordination(s).semaphores  # forgotten once idle
            assert not coordination(s)._leases

    run(body)


def test_lock_timeouts_non_blocking_and_release_errors() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        async with other_client(s) as c2:
            mine, theirs = Lock("x", client=c), Lock("x", client=c2)
            assert await mine.acquire() is True
            assert await theirs.locked() is True
            assert await theirs.acquire(timeout=0.05) is False
            assert await theirs.acquire(blocking=False) is False
            with pytest.raises(ValueError, match="non-blocking"):
                theirs.acquire(blocking=False, timeout=1)
            with pytest.raises(RuntimeError, match="Released too often"):
                theirs.release()
            waiting = asyncio.ensure_future(theirs.acquire())
            await until(lambda: n_waiting(s, "semaphores", "x"), what="a waiter")
            assert not waiting.done()
            assert await mine.release() is True
            assert await waiting is True
            assert await mine.acquire(blocking=False) is False
            assert await theirs.release() is True
            assert await mine.locked() is False

    run(body)


def test_lock_and_semaphore_pickle_as_their_names() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        lock = pickle.loads(pickle.dumps(Lock("p", client=c)))
        assert isinstance(lock, Lock) and lock.name == "p" and lock.max_leases == 1
        sem = pickle.loads(pickle.dumps(Semaphore(3, "q", client=c)))
        assert (sem.name, sem.max_leases) == ("q", 3)
        assert Lock(client=c).name != Lock(client=c).name  # unique default names

    run(body)


def test_a_cancelled_acquire_takes_no_lease() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        async with other_client(s) as c2:
            mine, theirs = Lock("c", client=c), Lock("c", client=c2)
            assert await mine.acquire()
            waiting = asyncio.ensure_future(theirs.acquire())
            await until(lambda: n_waiting(s, "semaphores", "c"), what="a waiter")
            waiting.cancel()
            await until(lambda: not n_waiting(s, "semaphores", "c"), what="withdrawn")
            assert await mine.release()
            assert await mine.locked() is False  # nobody got it

    run(body)


def test_lease_of_a_client_that_leaves_goes_to_the_next_waiter() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        c2 = await Client(s.address, asynchronous=True, set_as_default=False)
        assert await Lock("held", client=c2).acquire()
        assert await Semaphore(2, "pool", client=c2).acquire()
        assert await Semaphore(2, "pool", client=c2).acquire()
        lock, sem = Lock("held", client=c), Semaphore(2, "pool", client=c)
        got_lock = asyncio.ensure_future(lock.acquire())
        got_sem = asyncio.ensure_future(sem.acquire())
        await until(
            lambda: n_waiting(s, "semaphores", "held") and n_waiting(s, "semaphores", "pool")
        )
        await c2.close()
        assert await asyncio.wait_for(got_lock, 5) is True
        assert await asyncio.wait_for(got_sem, 5) is True
        assert c2.id not in coordination(s)._leases
        assert await sem.get_value() == 1
        await lock.release()
        await sem.release()

    run(body)


# -------------------------------------------------------------- semaphores


def test_semaphore_never_exceeds_its_leases() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        async with other_client(s) as c2:
            inside = peak = 0

            async def use(client: Client) -> None:
                nonlocal inside, peak
                async with Semaphore(2, "db", client=client):
                    inside += 1
                    peak = max(peak, inside)
                    await client.scheduler_info()
                    inside -= 1

            await asyncio.gather(*(use(cl) for cl in [c, c2] * 6))
            assert 1 <= peak <= 2

            first, second = Semaphore(2, "db", client=c), Semaphore(2, "db", client=c2)
            assert await first.acquire() and await second.acquire()
            assert await first.get_value() == 2
            assert await Semaphore(2, "db", client=c).acquire(timeout=0.05) is False
            with pytest.raises(ValueError, match="Inconsistent max leases"):
                await Semaphore(3, "db", client=c).acquire()
            with pytest.raises(ValueError, match="Inconsistent max leases"):
                await Lock("db", client=c).acquire()
            assert await second.release() is True
            assert await first.get_value() == 1
            await first.close()
            assert "db" not in coordination(s).semaphores
            with pytest.raises(ValueError, match="max_leases"):
                Semaphore(0)

    run(body)


# ------------------------------------------------------------------ events


def test_event_wait_set_clear_across_clients() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        async with other_client(s) as c2:
            setter, waiter = Event("go", client=c), Event("go", client=c2)
            assert await waiter.is_set() is False
            assert await waiter.wait(timeout=0.05) is False
            woken = [asyncio.ensure_future(waiter.wait()) for _ in range(3)]
            await until(lambda: n_waiting(s, "events", "go") == 3)
            assert not any(w.done() for w in woken)
            await setter.set()
            assert await asyncio.gather(*woken) == [True, True, True]
            assert await waiter.is_set() is True
            assert await waiter.wait(timeout=0) is True
            await setter.clear()
            assert await waiter.is_set() is False
            assert await waiter.wait(timeout=0.05) is False
            assert "go" not in coordination(s).events  # cleared and unwatched: forgotten
            assert pickle.loads(pickle.dumps(setter)).name == "go"

    run(body)


# --------------------------------------------------------------- variables


@pytest.mark.parametrize("protocol", ["tcp", "inproc"])
def test_variable_set_get_delete_with_timeouts(protocol: str) -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        async with other_client(s) as c2:
            mine, theirs = Variable("v", client=c), Variable("v", client=c2)
            with pytest.raises(TimeoutError):
                await theirs.get(timeout=0.05)
            pending = asyncio.ensure_future(theirs.get())
            await until(lambda: n_waiting(s, "variables", "v", "getters"), what="a getter")
            await mine.set({"a": [1, 2]})
            assert await pending == {"a": [1, 2]}
            assert await theirs.get(timeout=0) == {"a": [1, 2]}
            await mine.set(lambda x: x * 3)  # anything picklable (cloudpickle)
            assert (await theirs.get())(2) == 6
            mine.delete()
            with pytest.raises(TimeoutError):
                await theirs.get(timeout=0.05)
            assert "v" not in coordination(s).variables

    run(body, protocol=protocol)


def test_variable_set_honours_its_timeout() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        stored = s.handlers["variable-set"]
        release = asyncio.Event()

        async def slow_set(peer: Any, msg: Any) -> Any:
            await release.wait()
            result = stored(peer, msg)
            return await result if inspect.isawaitable(result) else result

        s.handlers["variable-set"] = slow_set
        v = Variable("slow", client=c)
        with pytest.raises(TimeoutError):
            await v.set(1, timeout=0.2)
        release.set()
        await v.set(2, timeout=None)
        assert await v.get() == 2
        with pytest.raises(ValueError, match="Invalid duration"):
            v.set(3, timeout="soon")

    run(body)


def test_variable_holding_a_future_keeps_its_data() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        async with other_client(s) as c2:
            producer = Variable("result", client=c2)
            fut = c2.submit(inc, 41)
            await producer.set(fut)
            key = fut.key
            del fut
            await c2.close()  # the producer is gone, its futures with it
            assert s.tasks[key].state in ("waiting", "processing", "memory")
            got = await Variable("result", client=c).get(timeout=5)
            assert got.key == key and await got == 42
            assert s.tasks[key].state == "memory"
            del got  # the variable still holds it
            await until(lambda: key not in c.futures, what="the client released it")
            assert s.tasks[key].state == "memory"
            Variable("result", client=c).delete()
            await until(lambda: key not in s.tasks, what="the variable let go of the key")
            assert "variable-result" not in s.clients

    run(body)


def test_variable_refuses_a_future_the_scheduler_forgot() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        fut = c.submit(inc, 1, key="gone")
        await fut
        await c.cancel([fut])
        await until(lambda: "gone" not in s.tasks)
        with pytest.raises(ValueError, match="unknown to the scheduler"):
            await Variable("w", client=c).set(fut)
        assert "w" not in coordination(s).variables

    run(body)


# ------------------------------------------------------------------ queues


@pytest.mark.parametrize("protocol", ["tcp", "inproc"])
def test_queue_is_fifo_and_keeps_queued_futures_alive(protocol: str) -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        async with other_client(s) as producer:
            q = Queue("jobs", client=producer)
            futures = producer.map(inc, range(3))
            keys = [f.key for f in futures]
            for f in futures:
                await q.put(f)
            await q.put("plain")
            await q.put({"x": (1, 2)})
            del futures, f
        # the producer has closed: only the queue wants those keys now
        await until(lambda: all(s.tasks[k].state == "memory" for k in keys))
        q = Queue("jobs", client=c)
        assert await q.qsize() == 5
        got = [await q.get() for _ in range(3)]
        assert [g.key for g in got] == keys
        assert await c.gather(got) == [1, 2, 3]
        assert await q.get(timeout=1) == "plain"
        assert await q.get(batch=True) == [{"x": (1, 2)}]
        assert await q.get(batch=True) == []
        with pytest.raises(TimeoutError):
            await q.get(timeout=0.05)
        del got
        await until(lambda: not any(k in s.tasks for k in keys), what="keys released")
        assert "queue-jobs" not in s.clients and "jobs" not in coordination(s).queues

    run(body, protocol=protocol)


def test_queue_maxsize_batches_and_waiting_order() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        async with other_client(s) as c2:
            q, q2 = Queue("small", client=c, maxsize=1), Queue("small", client=c2, maxsize=1)
            await q.put(1)
            with pytest.raises(TimeoutError):
                await q2.put(2, timeout=0.05)
            putter = asyncio.ensure_future(q2.put(3))
            await until(lambda: n_waiting(s, "queues", "small", "putters"), what="a putter")
            with pytest.raises(ValueError, match="Inconsistent maxsize"):
                await Queue("small", client=c, maxsize=5).put(0)
            assert await q.get() == 1
            await putter
            assert await q.get() == 3

            batch = asyncio.ensure_future(q2.get(batch=3))
            first = asyncio.ensure_future(q2.get())  # behind the batch
            await until(lambda: n_waiting(s, "queues", "small", "getters") == 2)
            for i in range(4):
                await q.put(i)
            assert await batch == [0, 1, 2]
            assert await first == 3
            with pytest.raises(NotImplementedError):
                q.get(batch=2, timeout=1)

    run(body)


def test_a_cancelled_get_takes_nothing_from_the_queue() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        q = Queue("c", client=c)
        getting = asyncio.ensure_future(q.get())
        await until(lambda: n_waiting(s, "queues", "c", "getters"), what="a getter")
        getting.cancel()
        await until(lambda: "c" not in coordination(s).queues, what="withdrawn")
        await q.put("kept")
        assert await q.get(timeout=1) == "kept"

    run(body)


def test_waiting_requests_of_a_client_that_leaves_are_dropped() -> None:
    async def body(s, workers, c):  # type: ignore[no-untyped-def]
        c2 = await Client(s.address, asynchronous=True, set_as_default=False)
        q = Queue("q", client=c2)
        getting = asyncio.ensure_future(q.get(batch=2))
        waiting = asyncio.ensure_future(Event("e", client=c2).wait())
        await until(lambda: n_waiting(s, "queues", "q", "getters") and n_waiting(s, "events", "e"))
        fut = c.submit(inc, 1)
        await Queue("q", client=c).put(fut)  # taken by the batch get, which waits for 2
        await c2.close()
        for t in (getting, waiting):
            with pytest.raises((asyncio.CancelledError, OSError)):
                await t
        await until(lambda: not coordination(s)._waiting, what="requests dropped")
        again = await Queue("q", client=c).get(timeout=1)  # back in the queue
        assert again.key == fut.key and await again == 2
        assert "e" not in coordination(s).events

    run(body)
