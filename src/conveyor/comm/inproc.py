"""In-process transport for tests: ``inproc://<process-id>/<n>``.

A connected pair of :class:`InProcComm` objects hands messages to each other as Python
objects: no msgpack, no framing, no copies (data still travels inside ``Serialized``).
Both ends must live in the same event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import deque
from typing import Any

from conveyor.comm.addressing import unparse_address
from conveyor.comm.core import Backend, Comm, CommClosedError, Handler, Listener

__all__ = ["InProcBackend", "InProcComm", "InProcListener"]


class InProcComm(Comm):
    """One end of an in-process connection."""

    def __init__(self, local_address: str, peer_address: str) -> None:
        super().__init__()
        self._local = local_address
        self._peer_address = peer_address
        self._peer: InProcComm | None = None
        self._inbox: deque[object] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed_locally = False
        self._closed_by_peer = False

    @classmethod
    def pair(cls, a_address: str, b_address: str) -> tuple[InProcComm, InProcComm]:
        """Return two comms connected to each other."""
        a = cls(a_address, b_address)
        b = cls(b_address, a_address)
        a._peer, b._peer = b, a
        return a, b

    @property
    def local_address(self) -> str:
        return self._local

    @property
    def peer_address(self) -> str:
        return self._peer_address

    def closed(self) -> bool:
        return self._closed_locally or self._closed_by_peer

    def _closed_error(self) -> CommClosedError:
        how = "locally" if self._closed_locally else "by peer"
        return CommClosedError(f"Comm to {self._peer_address} closed {how}")

    async def read(self) -> object:
        while not self._inbox or self._closed_locally:
            if self.closed():
                raise self._closed_error()
            if self._waiter is not None:
                raise RuntimeError(f"Concurrent read() calls on the comm to {self._peer_address}")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._inbox.popleft()

    async def write(self, msg: object) -> int:
        if self.closed() or self._peer is None:
            raise self._closed_error()
        self._peer._deliver(msg)
        return 0

    async def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if self._closed_locally:
            return
        self._closed_locally = True
        self._inbox.clear()
        self._wake()
        if self._peer is not None:
            self._peer._on_peer_closed()

    def _deliver(self, msg: object) -> None:
        self._inbox.append(msg)
        self._wake()

    def _on_peer_closed(self) -> None:
        self._closed_by_peer = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class InProcListener(Listener):
    """Accepts in-process connections at one ``inproc://`` address."""

    def __init__(self, backend: InProcBackend, address: str, handler: Handler) -> None:
        self._backend = backend
        self._address = address
        self._handler = handler
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._backend.register(self._address, self)

    def stop(self) -> None:
        self._backend.unregister(self._address, self)

    @property
    def listen_address(self) -> str:
        return self._address

    @property
    def contact_address(self) -> str:
        return self._address

    def accept(self, client_address: str) -> InProcComm:
        """Connect a new client; start the handler on the server end."""
        if asyncio.get_running_loop() is not self._loop:
            raise ConnectionRefusedError(
                f"inproc listener {self._address} runs in another event loop"
            )
        client, server = InProcComm.pair(client_address, self._address)
        task = asyncio.ensure_future(self._handler(server))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return client


class InProcBackend(Backend):
    """The ``inproc://`` transport; its listeners are known to this backend only."""

    private = True  # messages never leave the process

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:12]
        self._counter = itertools.count(1)
        self._listeners: dict[str, InProcListener] = {}

    def new_address(self) -> str:
        """Return a fresh, unused ``inproc://`` address."""
        return unparse_address("inproc", f"{self._prefix}/{next(self._counter)}")

    def register(self, address: str, listener: InProcListener) -> None:
        """Make ``listener`` reachable at ``address``."""
        if self._listeners.get(address, listener) is not listener:
            raise OSError(f"Address {address} is already in use")
        self._listeners[address] = listener

    def unregister(self, address: str, listener: InProcListener) -> None:
        """Make ``listener`` unreachable (a no-op if it is not registered)."""
        if self._listeners.get(address) is listener:
            del self._listeners[address]

    async def connect(self, loc: str, **kwargs: Any) -> InProcComm:
        address = unparse_address("inproc", loc)
        listener = self._listeners.get(address)
        if listener is None:
            raise ConnectionRefusedError(f"No inproc listener at {address}")
        return listener.accept(self.new_address())

    def listen(self, loc: str, handler: Handler, **kwargs: Any) -> InProcListener:
        address = unparse_address("inproc", loc) if loc.strip("/") else self.new_address()
        return InProcListener(self, address, handler)
