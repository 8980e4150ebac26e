"""The Client: submit work to a conveyor cluster and collect the results."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Self

from dask.base import tokenize
from dask.utils import funcname

from conveyor import config
from conveyor.client import current
from conveyor.client.actor import Actor
from conveyor.client.callbacks import CallbacksMixin
from conveyor.client.collections import CollectionsMixin
from conveyor.client.control import ControlMixin
from conveyor.client.datasets import DatasetsMixin
from conveyor.client.debugging import DebuggingMixin
from conveyor.client.events import EventsMixin
from conveyor.client.explain import ExplainMixin
from conveyor.client.future import CancelledError, Future, FutureState, all_settled
from conveyor.client.graph import (
    MapKeys,
    call_message,
    call_options,
    check_fifo_timeout,
    function_entry,
    map_batches,
    normalize_key,
    submit_key,
)
from conveyor.client.logs import LogsMixin
from conveyor.client.maintenance import MaintenanceMixin
from conveyor.client.reprs import ReprMixin
from conveyor.client.scatter import ScatterMixin
from conveyor.client.secession import seceding_if_in_task
from conveyor.client.structure import collect_futures, substitute
from conveyor.client.task_stream import TaskStreamMixin
from conveyor.comm import connect
from conveyor.comm.security import Security, client_security
from conveyor.deploy.local import LocalCluster
from conveyor.protocol import unpickle_bytes
from conveyor.rpc import Msg, Peer, PeerPool, read_scheduler_file, serve_peer
from conveyor.rpc.actor_instance import make_actor
from conveyor.rpc.data import unpack_data
from conveyor.rpc.gcpause import gc_paused
from conveyor.rpc.loop import LoopRunner
from conveyor.rpc.threads import run_in_thread

logger = logging.getLogger("conveyor.client")

_GATHER_ATTEMPTS = 5


#: seconds between attempts to reach a lost scheduler: the first, and at most
_FIRST_RECONNECT_DELAY = 0.1
_MAX_RECONNECT_DELAY = 2.0


class Client(
    CallbacksMixin,
    CollectionsMixin,
    ControlMixin,
    DatasetsMixin,
    DebuggingMixin,
    EventsMixin,
    ExplainMixin,
    LogsMixin,
    MaintenanceMixin,
    ReprMixin,
    ScatterMixin,
    TaskStreamMixin,
):
    """Connect to a cluster (or start a LocalCluster) and run work on it.

    ``Client()`` starts a LocalCluster with the keyword arguments given;
    ``Client("tcp://host:8786")`` or ``Client(scheduler_file=...)`` connects to a running
    scheduler; ``Client(cluster)`` connects to a cluster object. With
    ``asynchronous=True``, ``await`` the client and its methods.
    """

    def __init__(
        self,
        address: Any = None,
        *,
        timeout: float | str | None = None,
        set_as_default: bool = True,
        scheduler_file: str | None = None,
        asynchronous: bool = False,
        name: str | None = None,
        direct_to_workers: bool | None = None,
        security: Security | bool | None = None,
        **cluster_kwargs: Any,
    ) -> None:
        self.id = f"Client-{name + '-' if name else ''}{uuid.uuid4()}"
        self.asynchronous = asynchronous
        self.status = "created"
        self._timeout = (
            config.parse_duration(
                config.get("comm.timeouts.connect") if timeout is None else timeout
            )
            or 30.0
        )
        self.cluster: Any = None
        self._own_cluster = False
        #: the scheduler's dashboard URL, as it said when this client registered
        self._scheduler_dashboard: str | None = None
        self._cluster_kwargs: dict[str, Any] | None = None
        self.scheduler_file = scheduler_file
        if address is not None and not isinstance(address, str):
            self.cluster = address
        elif address is None and scheduler_file is None:
            # the LocalCluster made on start (security=True there: temporary credentials)
            self._cluster_kwargs = {**cluster_kwargs, "security": security}
            security = None  # the cluster's, once it is made
        elif cluster_kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(cluster_kwargs)}")
        #: TLS credentials and policy: given, the cluster's, or ``conveyor.comm.tls.*``
        self.security: Security = client_security(self.cluster, security)
        self._address = address if isinstance(address, str) else None
        self.futures: dict[Any, FutureState] = {}
        #: keys of actor futures, with their classes: their results are Actor handles
        self._actors: dict[Any, type] = {}
        self._refcount: dict[Any, int] = {}
        #: messages and releases from other threads, sent in order by the loop
        self._outbox: list[Msg | _Release] = []
        self._drain_scheduled = False
        self._lock = threading.Lock()
        self.scheduler: Peer | None = None
        self.pool: PeerPool | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._runner: LoopRunner | None = None
        self._serve_task: asyncio.Task[None] | None = None
        #: while reconnecting after the scheduler connection was lost: why calls fail
        self._lost: str | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._handlers: dict[str, Callable[[Peer, Msg], Any]] = {
            "key-in-memory": self._on_key_in_memory,
            "task-erred": self._on_task_erred,
            "lost-data": self._on_lost_data,
            "cancelled-keys": self._on_cancelled_keys,
        }
        self._init_events()
        if set_as_default:
            current.set_default(self)
        self._started: Any = None
        if asynchronous:
            self._started = asyncio.ensure_future(self._start())
        else:
            self._runner = LoopRunner.acquire()
            self.loop = self._runner.loop
            try:
                self._runner.run_sync(self._start)
            except BaseException:
                self._release_runner()
                current.unset_default(self)
                raise

    # --------------------------------------------------------------- lifecycle

    async def _start(self) -> Client:
        if self.status == "running":
            return self
        self.loop = asyncio.get_running_loop()
        if self._cluster_kwargs is not None:
            self.cluster = await LocalCluster(asynchronous=True, **self._cluster_kwargs)
            self._own_cluster = True
            self.security = self.cluster.security
        if self.cluster is not None:
            address = self.cluster.scheduler_address
        elif self.scheduler_file is not None:
            address = await run_in_thread(read_scheduler_file, self.scheduler_file, self._timeout)
        else:
            address = self._address
        try:
            comm = await self._dial(address, self._timeout)
        except OSError as e:
            await self._close_cluster()
            raise OSError(f"Could not connect to the scheduler at {address}: {e}") from e
        self.scheduler = Peer(comm, self.loop)
        self.scheduler.on_unsendable = self._on_unsendable
        self._serve_task = self.loop.create_task(self._serve(self.scheduler))
        self.pool = PeerPool(
            "client",
            {},
            self._timeout,
            connection_args=self.security.get_connection_args("client"),
        )
        reply = await self.scheduler.request({"op": "register-client", "client": self.id})
        self._scheduler_dashboard = reply.get("dashboard") if isinstance(reply, dict) else None
        self._admitted(reply)
        self.status = "running"
        return self

    def __await__(self) -> Any:
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        return self._started.__await__()

    async def _serve(self, peer: Peer) -> None:
        await serve_peer(peer, self._handlers)
        if peer is not self.scheduler:
            return  # replaced already
        lost = f"the connection to the scheduler at {peer.address} was lost"
        if self.status == "running":
            self.status = "connecting"
            self._lost = lost
            logger.warning("Lost connection to the scheduler at %s; reconnecting", peer.address)
            with self._lock:  # meant for the lost scheduler: a new one knows none of it
                self._outbox = []
            self._reconnecting = asyncio.ensure_future(self._reconnect(peer.address))
        for st in list(self.futures.values()):
            if not st.done():
                st.cancel(lost)

    async def _reconnect(self, address: str) -> None:
        """Connect again to the scheduler at ``address`` (a restarted one, say) until
        the client closes. The new scheduler knows none of the old futures: those were
        cancelled when the connection was lost."""
        delay = _FIRST_RECONNECT_DELAY
        while self.status == "connecting":
            try:
                comm = await self._dial(address, min(self._timeout, 2.0))
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RECONNECT_DELAY)
                continue
            peer = Peer(comm, asyncio.get_running_loop())
            peer.on_unsendable = self._on_unsendable
            old, self.scheduler = self.scheduler, peer
            if old is not None:
                old.abort()
            self._serve_task = asyncio.ensure_future(self._serve(peer))
            try:
                reply = await peer.request({"op": "register-client", "client": self.id})
            except Exception as e:
                logger.info("Registering again with %s failed: %s", address, e)
                continue
            self._admitted(reply)
            if self.status == "connecting":
                self.status = "running"
                self._lost = None
                logger.info("Reconnected to the scheduler at %s", address)

    async def _dial(self, address: str, timeout: float) -> Any:
        """A connection to the scheduler at ``address``, with this client's TLS settings."""
        args = self.security.get_connection_args("client")
        return await connect(address, timeout, role="client", **args)

    def _admitted(self, reply: Any) -> None:
        """Show workers and nannies the cluster token of the scheduler's reply."""
        if self.pool is not None:
            self.pool.connection_args["handshake_extra"] = {"token": reply.get("token", "")}

    def _check_connected(self) -> None:
        """Raise a clear error if calls cannot reach the scheduler now."""
        if self.status == "running" and self.scheduler is not None:
            return
        if self._lost is not None:
            raise ConnectionError(f"{self._lost}; reconnecting (calls fail meanwhile)")
        raise RuntimeError(f"this client is not connected (status {self.status})")

    def close(self, timeout: float | str | None = None) -> Any:
        """Disconnect, and stop the LocalCluster if this client started it."""
        if self.asynchronous:
            return self._close()
        if self._runner is None:
            return None
        try:
            self._runner.run_sync(self._close, timeout=config.parse_duration(timeout))
        finally:
            self._release_runner()
        return None

    async def _close(self) -> None:
        if self.status in ("closing", "closed") and self.scheduler is None:
            return
        self.status = "closing"
        for st in list(self.futures.values()):  # nothing is to wait on a closed client
            if not st.done():
                st.cancel(f"{st.key!r} was cancelled: its client closed")
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        current.unset_default(self)
        if self.pool is not None:
            await self.pool.close()
        if self.scheduler is not None:
            await self.scheduler.close()
            self.scheduler = None
        if self._serve_task is not None:
            self._serve_task.cancel()
        await self._close_cluster()
        await self._stop_callbacks()
        self.futures.clear()
        self.status = "closed"

    async def _close_cluster(self) -> None:
        if self._own_cluster and self.cluster is not None:
            await self.cluster.close()
            self.cluster = None

    def _release_runner(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.release()

    def as_current(self) -> contextlib.AbstractContextManager[Client]:
        """A context manager within which this client is the default, and dask's
        scheduler: ``with client.as_current(): x.compute()``."""
        return current.as_current(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Client:
        await self
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Self:
        """A client is a handle on one connection: copies (say, of a dask config that
        names it) share it rather than half-copy its threads and sockets."""
        return self

    def __del__(self) -> None:
        # getattr: a half-built client (its __init__ raised, or a copy) has no _runner
        if getattr(self, "_runner", None) is not None and self.status in ("running", "connecting"):
            with contextlib.suppress(Exception):
                self.close()

    # ------------------------------------------------------------- sync bridge

    def sync(self, fn: Callable[..., Any], *args: Any, timeout: Any = None, **kwargs: Any) -> Any:
        """Run coroutine function ``fn``: awaitable if asynchronous, else blocking."""
        seconds = config.parse_duration(timeout)
        if self.asynchronous or self._in_loop_thread():
            coro = fn(*args, **kwargs)
            return asyncio.wait_for(coro, seconds) if seconds is not None else coro
        if self._runner is None:
            raise RuntimeError("this client is closed")
        return self._runner.run_sync(fn, *args, timeout=seconds, **kwargs)

    def _in_loop_thread(self) -> bool:
        return self._runner is not None and self._runner.in_loop_thread()

    def _send(self, msg: Msg) -> None:
        """Send ``msg`` to the scheduler, after everything sent or released before it."""
        self._check_connected()
        if self.asynchronous or self._in_loop_thread():
            self._drain_outbox()
            assert self.scheduler is not None
            self.scheduler.send(msg)
        else:
            self._enqueue(msg)

    def _enqueue(self, item: Msg | _Release) -> None:
        """Queue a message or a release for the loop, keeping the order they happened in."""
        with self._lock:
            self._outbox.append(item)
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        assert self.loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self.loop.call_soon_threadsafe(self._drain_outbox)

    def _wait_sent(self, timeout: float = 10.0) -> None:
        """Wait (from a thread other than the loop's) until the loop has handed every
        message queued so far to the comm; at most ``timeout`` seconds."""
        if self.asynchronous or self._in_loop_thread() or self.loop is None:
            return
        done = threading.Event()

        def drain() -> None:
            try:
                self._drain_outbox()
            finally:
                done.set()

        try:
            self.loop.call_soon_threadsafe(drain)
        except RuntimeError:  # the loop is closed
            return
        done.wait(timeout)

    def _drain_outbox(self) -> None:
        """Send what other threads queued, in order; adjacent releases go as one message.

        A release must never overtake a message sent before it: that message may name
        the released key as a dependency.
        """
        with self._lock:
            items, self._outbox = self._outbox, []
            self._drain_scheduled = False
        scheduler = self.scheduler
        if scheduler is None:
            return
        released: list[Any] = []
        for item in items:
            if isinstance(item, _Release):
                if item.key not in self._refcount:  # not taken up again meanwhile
                    released.append(item.key)
                continue
            if released:
                scheduler.send({"op": "client-releases-keys", "keys": released})
                released = []
            scheduler.send(item)
        if released:
            scheduler.send({"op": "client-releases-keys", "keys": released})

    # ------------------------------------------------------ reference counting

    def _futures(self, keys: list[Any]) -> list[Future]:
        """New futures for ``keys``, counted in one go."""
        out: list[Future] = []
        with self._lock:
            refcount, states = self._refcount, self.futures
            make = Future.__new__
            for key in keys:
                refcount[key] = refcount.get(key, 0) + 1
                st = states.get(key)
                if st is None:
                    st = states[key] = FutureState(key)
                fut = make(Future)  # bypasses __init__: the reference is counted above
                fut.key, fut._client, fut._state = key, self, st
                out.append(fut)
        return out

    def _inc_ref(self, key: Any) -> FutureState:
        with self._lock:
            self._refcount[key] = self._refcount.get(key, 0) + 1
            st = self.futures.get(key)
            if st is None:
                st = self.futures[key] = FutureState(key)
            return st

    def _adopt(self, key: Any) -> FutureState:
        """Count a future for ``key`` that this client did not submit (one unpickled
        here); if the key is new to this client, tell the scheduler it wants it, so
        that the future learns when it is done."""
        with self._lock:
            new = key not in self._refcount
        st = self._inc_ref(key)
        if new:
            self._send({"op": "client-desires-keys", "keys": [key]})
        return st

    def _adopt_future(self, key: Any) -> Future:
        """A Future for ``key``, which this client may not have submitted (see
        ``_adopt``)."""
        fut = Future.__new__(Future)
        fut.key, fut._client, fut._state = key, self, self._adopt(key)
        return fut

    def _dec_ref(self, key: Any) -> None:
        with self._lock:
            n = self._refcount.get(key, 0) - 1
            if n > 0:
                self._refcount[key] = n
                return
            self._refcount.pop(key, None)
            self.futures.pop(key, None)
            if self._actors:
                self._actors.pop(key, None)
            if self.status != "running" or self.scheduler is None or self.loop is None:
                return
        self._enqueue(_Release(key))

    # ------------------------------------------------------- scheduler events

    def _on_key_in_memory(self, peer: Peer, msg: Msg) -> None:
        st = self.futures.get(msg["key"])
        if st is not None:
            st.finish(msg.get("type"), list(msg.get("workers") or ()), msg.get("result"))

    def _on_task_erred(self, peer: Peer, msg: Msg) -> None:
        st = self.futures.get(msg["key"])
        if st is not None:
            st.set_error(
                msg.get("exception"),
                msg.get("traceback"),
                msg.get("exception_text", ""),
                msg.get("traceback_text", ""),
            )

    def _on_lost_data(self, peer: Peer, msg: Msg) -> None:
        st = self.futures.get(msg["key"])
        if st is not None:
            st.lose()

    def _on_unsendable(self, msg: Msg, error: Exception) -> None:
        """A message could not be encoded and was not sent: the keys it would have
        submitted fail with the reason, and the connection lives on."""
        keys: list[Any] = list(msg.get("keys") or ())
        keys += [t["key"] for t in msg.get("tasks") or ()]
        for batch in msg.get("batches") or ():
            if "keys" in batch:
                keys += batch["keys"]
            elif "prefix" in batch:
                start = batch["start"]
                keys += [f"{batch['prefix']}-{i}" for i in range(start, start + batch["count"])]
        if not keys:
            logger.error("Dropped a message to the scheduler: %s", error)
        for key in keys:
            st = self.futures.get(key)
            if st is not None and not st.done():
                st.set_error(None, None, f"{type(error).__name__}: {error}", "")

    def _on_cancelled_keys(self, peer: Peer, msg: Msg) -> None:
        reason = msg.get("reason")
        for key in msg["keys"]:
            st = self.futures.get(key)
            if st is not None:
                st.cancel(f"{key!r} was cancelled ({reason})" if reason else "")
                # the scheduler forgot the key for this client: a new future for it
                # starts afresh, as after Client.cancel
                with self._lock:
                    if self.futures.get(key) is st:
                        del self.futures[key]

    # ---------------------------------------------------------------- submit

    def submit(
        self,
        func: Callable[..., Any],
        *args: Any,
        key: Any = None,
        workers: str | Iterable[str] | None = None,
        resources: dict[str, float] | None = None,
        retries: int | None = None,
        priority: float = 0,
        fifo_timeout: Any = "100 ms",
        allow_other_workers: bool = False,
        pure: bool = True,
        actor: bool = False,
        actors: bool = False,
        **kwargs: Any,
    ) -> Future:
        """Run ``func(*args, **kwargs)`` on the cluster; return a Future for the result.

        With ``actor=True`` (or ``actors=True``), ``func`` is a class: its instance stays
        on the worker that made it, and the future's result is an :class:`Actor`
        handle whose method calls and attribute reads run there.

        Task options (none of them reaches ``func``): ``workers`` (names or addresses the
        task may run on), ``allow_other_workers`` (it may run elsewhere if none of them
        can), ``resources`` (amounts it needs free on its worker, ``{"GPU": 1}``),
        ``retries`` (reruns after an error), ``priority`` (higher runs first). Options
        set with ``dask.annotate`` where ``submit`` is called apply under these.
        ``fifo_timeout`` is accepted for compatibility and has no effect: earlier
        submissions come first among equal priorities.
        """
        if not callable(func):
            raise TypeError("First input to submit must be a callable function")
        check_fifo_timeout(fifo_timeout)
        actor_class: type | None = None
        if actor or actors:
            if not isinstance(func, type):
                raise TypeError(f"actor=True needs a class, not {type(func).__name__}")
            actor_class, args, func = func, (func, *args), make_actor
            pure = False  # every submission makes an instance of its own
        if key is None:
            key = submit_key(actor_class or func, args, kwargs, pure)
        else:
            key = normalize_key(key)
        options = call_options(
            key,
            workers=workers,
            allow_other_workers=allow_other_workers,
            retries=retries,
            resources=resources,
            priority=priority,
        )
        fut = Future(key, self)
        if actor_class is not None:
            self._actors[key] = actor_class
        fid, blob = function_entry(func)
        msg = call_message(key, fid, args, kwargs, 0, options)
        self._send(
            {
                "op": "update-graph",
                "tasks": [msg],
                "keys": [key],
                "priority": options.get("priority", 0),
                "functions": {fid: blob},
            }
        )
        return fut

    def map(
        self,
        func: Callable[..., Any],
        *iterables: Iterable[Any],
        key: str | list[Any] | None = None,
        workers: str | Iterable[str] | None = None,
        retries: int | None = None,
        resources: dict[str, float] | None = None,
        priority: float = 0,
        allow_other_workers: bool = False,
        fifo_timeout: Any = "100 ms",
        pure: bool = True,
        batch_size: int | None = None,
        actor: bool = False,
        actors: bool = False,
        **kwargs: Any,
    ) -> list[Future]:
        """Apply ``func`` to each element (or zipped elements) of the iterables.

        The task options (``workers``, ``allow_other_workers``, ``resources``,
        ``retries``, ``priority``, ``fifo_timeout``) apply to every task, as for
        :meth:`submit`; they never reach ``func``. ``batch_size``: how many tasks travel
        in one message (default 5,000; the scheduler starts on the first batch while the
        rest are made). ``actor=True``: ``func`` is a class, and each row makes one actor.
        """
        if not callable(func):
            raise TypeError("First input to map must be a callable function")
        if not iterables:
            raise TypeError("map needs at least one iterable")
        check_fifo_timeout(fifo_timeout)
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
        if actor or actors:
            return [
                self.submit(
                    func,
                    *row,
                    actor=True,
                    workers=workers,
                    retries=retries,
                    resources=resources,
                    priority=priority,
                    allow_other_workers=allow_other_workers,
                    **kwargs,
                )
                for row in zip(*iterables, strict=False)
            ]
        options = call_options(
            workers=workers,
            allow_other_workers=allow_other_workers,
            retries=retries,
            resources=resources,
            priority=priority,
        )
        rows: Iterable[tuple[Any, ...]] = zip(*iterables, strict=False)
        if isinstance(key, list):
            rows = list(rows)
            if len(key) != len(rows):
                raise ValueError(f"{len(key)} keys given for {len(rows)} tasks")
            keys = MapKeys("", given=key)
        elif pure:  # content hashes: the function and keyword arguments tokenized once
            keys = MapKeys(key or funcname(func), token=tokenize(func, kwargs))
        else:  # unique: one random token for the call, then the row number
            keys = MapKeys(f"{key or funcname(func)}-{uuid.uuid4().hex}")
        fid, blob = function_entry(func)
        futures: list[Future] = []
        with gc_paused():  # many futures at once: see conveyor.rpc.gcpause
            # Rows are read, named and sent a chunk at a time: the scheduler works on the
            # first chunks while this thread makes the rest.
            try:
                batches = map_batches(fid, rows, kwargs, keys, options, batch_size)
                for batch, cid, chunk, names in batches:
                    futures += self._futures(names)
                    self._send(
                        {
                            "op": "update-graph",
                            "batches": [batch],
                            "priority": options.get("priority", 0),
                            "functions": {fid: blob, cid: chunk},
                        }
                    )
            except BaseException:
                # an iterable or an argument failed part way: release what was sent now,
                # not whenever the traceback (which holds this frame) is dropped
                for fut in futures:
                    fut.release()
                raise
            # Hand the last chunks to the socket before the collector runs again: its
            # first collection walks every new future, and holds the GIL meanwhile.
            self._wait_sent()
        return futures

    # ---------------------------------------------------------------- gather

    def gather(self, futures: Any, errors: str = "raise", direct: bool | None = None) -> Any:
        """Wait for futures (anywhere inside lists, tuples, dicts, sets) and fetch results."""
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
        with seceding_if_in_task():  # waiting inside a task must not hold its thread
            return self.sync(self._gather, futures, errors)

    async def _gather_one(self, fut: Future) -> Any:
        st = fut._state
        await st.wait()
        if st.status != "finished":
            raise st.make_exception()
        data = await self._fetch({fut.key: st})
        return data[fut.key]

    async def _gather(self, futures: Any, errors: str = "raise") -> Any:
        found = collect_futures(futures)
        states = {f.key: f._state for f in found}
        await all_settled(states.values())
        bad = [k for k, st in states.items() if st.status != "finished"]
        if bad and errors == "raise":
            raise states[bad[0]].make_exception()
        good = {k: st for k, st in states.items() if st.status == "finished"}
        data = await self._fetch(good)
        return substitute(futures, data, skip=set(bad))

    async def _fetch(self, states: dict[Any, FutureState]) -> dict[Any, Any]:
        """Fetch finished keys straight from the workers holding them."""
        out: dict[Any, Any] = {}
        todo = {}
        actors = self._actors
        for key, st in states.items():
            if actors and key in actors and st.workers:
                # an actor stays on its worker: its result here is a handle on it
                holder = Future(key, self)  # the actor lives while its handle does
                out[key] = Actor(actors[key], st.workers[0], key, self, holder)
            elif st.inline is not None:
                out[key] = unpickle_bytes(st.inline)
            else:
                todo[key] = st
        if not todo:
            return out
        for _attempt in range(_GATHER_ATTEMPTS):
            by_worker: dict[str, list[Any]] = {}
            for key, st in todo.items():
                if st.workers:
                    by_worker.setdefault(random.choice(st.workers), []).append(key)
            no_holder = [k for k, st in todo.items() if not st.workers]
            results = await asyncio.gather(
                *(self._get_data(w, keys) for w, keys in by_worker.items())
            )
            for got in results:
                for key, value in got.items():
                    out[key] = value
                    todo.pop(key, None)
            if not todo:
                return out
            await self._refresh_who_has(todo, no_holder)
        raise CancelledError(f"could not fetch results for {list(todo)[:5]} from any worker")

    async def _get_data(self, worker: str, keys: list[Any]) -> dict[Any, Any]:
        assert self.pool is not None
        try:
            peer = await self.pool.get(worker)
            reply = await peer.request({"op": "get-data", "keys": keys})
        except OSError as e:
            logger.info("Could not fetch %d keys from %s: %s", len(keys), worker, e)
            self.pool.drop(worker)
            return {}
        values, _, _ = unpack_data(reply)
        return values

    async def _refresh_who_has(self, todo: dict[Any, FutureState], no_holder: list[Any]) -> None:
        assert self.scheduler is not None
        who_has = await self.scheduler.request({"op": "who-has", "keys": list(todo)})
        for key, st in todo.items():
            holders = list(who_has.get(key) or ())
            if holders:
                st.workers = tuple(holders)
            elif st.status == "finished":
                st.lose()
        for st in todo.values():
            await st.wait()
            if st.status != "finished":
                raise st.make_exception()

    async def _request(self, msg: Msg) -> Any:
        self._check_connected()
        assert self.scheduler is not None
        return await self.scheduler.request(msg)


class _Release(NamedTuple):
    """In the outbox: the last future for ``key`` went away."""

    key: Any


def default_client() -> Client:
    """The most recently created client that was set as default."""
    return current.default_client()
