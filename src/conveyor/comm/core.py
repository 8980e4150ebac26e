"""The small interface every transport implements: Comm, Listener and Backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, ClassVar, Self

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "Backend",
    "Comm",
    "CommClosedError",
    "Handler",
    "Listener",
]

#: Largest frame a peer may send unless configured otherwise.
DEFAULT_MAX_FRAME_SIZE = 512 * 1024 * 1024


class CommClosedError(OSError):
    """The connection is closed: by either end, by an error, or after bad bytes."""


class Comm(ABC):
    """A message-oriented, bidirectional connection to one peer.

    ``name`` labels the comm in logs; ``peer_info`` is the peer's handshake message
    (empty when no handshake was made).
    """

    def __init__(self) -> None:
        self.name: str | None = None
        self.peer_info: dict[str, object] = {}

    @abstractmethod
    async def read(self) -> object:
        """Return the next message; raise :class:`CommClosedError` once closed."""

    @abstractmethod
    async def write(self, msg: object) -> int:
        """Send one message and return the number of bytes written (best effort)."""

    @abstractmethod
    async def close(self) -> None:
        """Close gracefully: flush what was written, then close."""

    @abstractmethod
    def abort(self) -> None:
        """Close immediately, dropping anything not yet sent."""

    @abstractmethod
    def closed(self) -> bool:
        """Return True once the comm is closed (locally or by the peer)."""

    def watch_writes(self, on_pause: Callable[[bool], None] | None) -> None:
        """Call ``on_pause(True)`` when writes start to wait for the peer to take what
        was written (more is unsent than the transport buffers freely), and
        ``on_pause(False)`` when they no longer do; ``None`` stops the calls. A
        transport without flow control (inproc) never makes them."""
        return None  # no flow control here: never paused

    def handshake_done(self) -> None:
        """The conveyor handshake succeeded: lift the limits a listening transport keeps
        for a stranger until then (see ``TCPComm``)."""
        return None

    @property
    @abstractmethod
    def local_address(self) -> str:
        """This end's address, e.g. ``"tcp://127.0.0.1:40123"``."""

    @property
    @abstractmethod
    def peer_address(self) -> str:
        """The other end's address."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed() else "open"
        name = f" {self.name}" if self.name else ""
        return (
            f"<{type(self).__name__}{name} {state} "
            f"local={self.local_address} peer={self.peer_address}>"
        )


#: Coroutine function called with each accepted comm.
Handler = Callable[[Comm], Awaitable[None]]


class Listener(ABC):
    """Accepts connections and hands each new comm to a handler."""

    @abstractmethod
    async def start(self) -> None:
        """Start listening."""

    @abstractmethod
    def stop(self) -> None:
        """Stop accepting new connections (existing comms stay open)."""

    @property
    @abstractmethod
    def listen_address(self) -> str:
        """The address listened on, with the real port once started."""

    @property
    @abstractmethod
    def contact_address(self) -> str:
        """The address others should connect to (a real IP instead of 0.0.0.0)."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.contact_address}>"


class Backend(ABC):
    """A transport: makes single connection attempts and listeners for one scheme.

    Locations are addresses without the ``scheme://`` prefix. Retries, timeouts and
    handshakes are done by :func:`conveyor.comm.connect` and :func:`conveyor.comm.listen`.
    """

    #: True when what is sent cannot be read on the network: encrypted (``tls://``) or
    #: never on one (``inproc://``). Only such transports are allowed when encryption is
    #: required (``require_encryption``).
    private: ClassVar[bool] = False
    #: True when ``connect`` and ``listen`` take ``ssl_context`` and
    #: ``ssl_handshake_timeout`` keywords; :func:`conveyor.comm.connect` refuses an
    #: ``ssl_context`` for any other transport.
    uses_ssl: ClassVar[bool] = False

    @abstractmethod
    async def connect(self, loc: str, **kwargs: Any) -> Comm:
        """Make one attempt to connect to ``loc``; raise ``OSError`` on failure."""

    @abstractmethod
    def listen(self, loc: str, handler: Handler, **kwargs: Any) -> Listener:
        """Return an unstarted listener on ``loc`` that calls ``handler`` per comm."""
