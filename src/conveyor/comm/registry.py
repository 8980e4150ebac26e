"""Entry points: ``connect`` and ``listen``, dispatching on the address scheme.

Backends make single connection attempts and raw listeners; this module adds what every
transport shares: retries until a deadline, the handshake, and a guard around handlers so
a failing handler is logged and its comm closed without harming the listener.
"""

from __future__ import annotations

import asyncio
import logging

from conveyor.comm.addressing import parse_address
from conveyor.comm.core import Backend, Comm, CommClosedError, Handler, Listener
from conveyor.comm.handshake import HandshakeError
from conveyor.comm.handshake import handshake as exchange_handshakes
from conveyor.comm.inproc import InProcBackend
from conveyor.comm.tcp import TCPBackend

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "connect", "get_backend", "listen", "register_backend"]

logger = logging.getLogger("conveyor.comm")

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
_FIRST_RETRY_DELAY = 0.005
_MAX_RETRY_DELAY = 0.25

_backends: dict[str, Backend] = {"tcp": TCPBackend(), "inproc": InProcBackend()}


def register_backend(scheme: str, backend: Backend) -> None:
    """Make ``backend`` handle addresses ``scheme://...`` (replacing any previous one)."""
    _backends[scheme.lower()] = backend


def get_backend(scheme: str) -> Backend:
    """Return the backend for ``scheme``; ``ValueError`` if there is none."""
    try:
        return _backends[scheme]
    except KeyError:
        raise ValueError(
            f"Unknown address scheme {scheme!r}; known schemes: {sorted(_backends)}"
        ) from None


async def _connect_until(
    backend: Backend,
    loc: str,
    addr: str,
    timeout: float,
    retry_refused: bool = True,
    **kwargs: object,
) -> Comm:
    """Retry refused or failed connection attempts with backoff until ``timeout``
    (a refused one raises at once unless ``retry_refused``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = _FIRST_RETRY_DELAY
    last_error: OSError | None = None
    while True:
        remaining = deadline - loop.time()
        if remaining > 0:
            try:
                async with asyncio.timeout(remaining):
                    return await backend.connect(loc, **kwargs)
            except TimeoutError:
                pass
            except OSError as e:
                if isinstance(e, ConnectionRefusedError) and not retry_refused:
                    raise  # nothing listens there, and nothing will: it is gone
                last_error = e
        remaining = deadline - loop.time()
        if remaining <= 0:
            reason = f": {last_error}" if last_error is not None else ""
            raise TimeoutError(
                f"Timed out trying to connect to {addr} after {timeout} s{reason}"
            ) from last_error
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, _MAX_RETRY_DELAY)


async def connect(
    addr: str,
    timeout: float = 30.0,
    *,
    handshake: bool = True,
    role: str = "unknown",
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    handshake_extra: dict[str, object] | None = None,
    name: str | None = None,
    retry_refused: bool = True,
    **kwargs: object,
) -> Comm:
    """Connect to ``addr``, retrying refused connections until ``timeout`` seconds
    (with ``retry_refused=False``, a refused connection raises ConnectionRefusedError
    at once: for peers that listen from start to end, such as workers).

    Then, unless ``handshake=False``, exchange handshakes (within ``handshake_timeout``
    and what is left of ``timeout``); the peer's is ``comm.peer_info``. Other keyword
    arguments (``max_frame_size`` ...) go to the backend. Raises ``TimeoutError`` (an
    ``OSError``) when no connection could be made in time, ``CommClosedError`` when the
    handshake fails.
    """
    scheme, loc = parse_address(addr)
    backend = get_backend(scheme)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    comm = await _connect_until(backend, loc, addr, timeout, retry_refused, **kwargs)
    comm.name = name
    if handshake:
        remaining = max(deadline - loop.time(), 0.0)
        await exchange_handshakes(comm, role, min(handshake_timeout, remaining), handshake_extra)
    return comm


def listen(
    addr: str,
    handler: Handler,
    *,
    handshake: bool = True,
    role: str = "unknown",
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    handshake_extra: dict[str, object] | None = None,
    **kwargs: object,
) -> Listener:
    """Return a listener on ``addr`` (start it, or use ``async with``).

    Each accepted comm is handshaken (unless ``handshake=False``) and then passed to
    ``handler``. Failed handshakes are logged and closed; a handler that raises is
    logged and its comm aborted. Other keyword arguments go to the backend.
    """
    scheme, loc = parse_address(addr)
    backend = get_backend(scheme)

    async def serve(comm: Comm) -> None:
        if handshake:
            try:
                await exchange_handshakes(comm, role, handshake_timeout, handshake_extra)
            except HandshakeError as e:
                logger.warning("Handshake with %s failed: %s", comm.peer_address, e)
                return
            except CommClosedError as e:  # already logged by the transport if it was bad bytes
                logger.debug("Connection from %s closed during handshake: %s", comm.peer_address, e)
                return
        await _run_handler(handler, comm)

    return backend.listen(loc, serve, **kwargs)


async def _run_handler(handler: Handler, comm: Comm) -> None:
    try:
        await handler(comm)
    except Exception as e:
        logger.error(
            "Handler %s for %s raised %s: %s",
            getattr(handler, "__qualname__", handler),
            comm.peer_address,
            type(e).__name__,
            e,
        )
        logger.debug("Handler traceback", exc_info=True)
        comm.abort()
    except BaseException:
        comm.abort()
        raise
