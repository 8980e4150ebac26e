"""Entry points: ``connect`` and ``listen``, dispatching on the address scheme.

Backends make single connection attempts and raw listeners; this module adds what every
transport shares: retries until a deadline, the handshake, a guard around handlers so
a failing handler is logged and its comm closed without harming the listener, and the
encryption policy: ``require_encryption`` (default ``conveyor.comm.require-encryption``)
refuses transports that put plain bytes on the network, and an ``ssl_context`` is
refused for a transport that would not use it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from conveyor import config
from conveyor.comm.addressing import parse_address
from conveyor.comm.core import Backend, Comm, CommClosedError, Handler, Listener
from conveyor.comm.handshake import HandshakeError
from conveyor.comm.handshake import handshake as exchange_handshakes
from conveyor.comm.inproc import InProcBackend
from conveyor.comm.tcp import TCPBackend
from conveyor.comm.tls import TLSBackend, TLSRefusedError

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "connect", "get_backend", "listen", "register_backend"]

logger = logging.getLogger("conveyor.comm")

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
_FIRST_RETRY_DELAY = 0.005
_MAX_RETRY_DELAY = 0.25

_backends: dict[str, Backend] = {
    "tcp": TCPBackend(),
    "tls": TLSBackend(),
    "inproc": InProcBackend(),
}


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
                if isinstance(e, TLSRefusedError):
                    raise
                if isinstance(e, ssl.SSLError):
                    # a refused certificate or TLS version: trying again will not help
                    raise TLSRefusedError(f"TLS handshake with {addr} failed: {e}") from e
                last_error = e
        remaining = deadline - loop.time()
        if remaining <= 0:
            reason = f": {last_error or type(last_error).__name__}" if last_error else ""
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
    arguments (``max_frame_size``, ``ssl_context``, ``require_encryption`` ...) go to the
    backend (see the module docstring for the last two). Raises ``TimeoutError`` (an
    ``OSError``) when no connection could be made in time, ``CommClosedError`` when the
    TLS or conveyor handshake fails.
    """
    scheme, loc = parse_address(addr)
    backend = get_backend(scheme)
    kwargs = _transport_options(addr, backend, handshake_timeout, kwargs, "connect to")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    comm = await _connect_until(backend, loc, addr, timeout, retry_refused, **kwargs)
    comm.name = name
    if handshake:
        remaining = max(deadline - loop.time(), 0.0)
        try:
            await exchange_handshakes(
                comm, role, min(handshake_timeout, remaining), handshake_extra
            )
        except HandshakeError:
            raise
        except CommClosedError as e:
            if not backend.uses_ssl:
                raise
            # under TLS 1.3 a server refuses a client's certificate after the client
            # finished its side of the TLS handshake: the refusal shows up here
            raise TLSRefusedError(
                f"{e} before the conveyor handshake: the server may have refused this "
                "side's TLS certificate (is it signed by the cluster's CA?)"
            ) from e
    return comm


def listen(
    addr: str,
    handler: Handler,
    *,
    handshake: bool = True,
    role: str = "unknown",
    handshake_timeout: float | None = None,
    handshake_extra: dict[str, object] | None = None,
    **kwargs: object,
) -> Listener:
    """Return a listener on ``addr`` (start it, or use ``async with``).

    Each accepted comm is handshaken (unless ``handshake=False``) and then passed to
    ``handler``. Failed handshakes are logged and closed; a handler that raises is
    logged and its comm aborted. ``handshake_timeout`` defaults to
    ``conveyor.comm.timeouts.handshake``. Other keyword arguments go to the backend (see
    the module docstring for ``ssl_context`` and ``require_encryption``).
    """
    if handshake_timeout is None:
        configured = config.parse_duration(config.get("comm.timeouts.handshake", None))
        handshake_timeout = configured or DEFAULT_HANDSHAKE_TIMEOUT
    scheme, loc = parse_address(addr)
    backend = get_backend(scheme)
    kwargs = _transport_options(addr, backend, handshake_timeout, kwargs, "listen on")

    async def serve(comm: Comm) -> None:
        if handshake:
            try:
                await exchange_handshakes(
                    comm, role, handshake_timeout, handshake_extra, server_side=True
                )
            except HandshakeError as e:
                logger.warning("Handshake with %s failed: %s", comm.peer_address, e)
                return
            except CommClosedError as e:  # already logged by the transport if it was bad bytes
                logger.debug("Connection from %s closed during handshake: %s", comm.peer_address, e)
                return
        else:
            comm.handshake_done()
        await _run_handler(handler, comm)

    return backend.listen(loc, serve, **kwargs)


def _transport_options(
    addr: str,
    backend: Backend,
    handshake_timeout: float,
    kwargs: dict[str, Any],
    action: str,
) -> dict[str, Any]:
    """Apply the encryption policy and return the keyword arguments for the backend."""
    kwargs = dict(kwargs)
    required = kwargs.pop("require_encryption", None)
    if required is None:
        required = config.get("comm.require-encryption", False)
    if not isinstance(required, bool):
        raise ValueError(f"require_encryption must be True or False, got {required!r}")
    if required and not backend.private:
        raise ValueError(
            f"Cannot {action} {addr}: encryption is required (require_encryption or "
            "conveyor.comm.require-encryption) and this address is not encrypted; use a "
            "tls:// address"
        )
    if backend.uses_ssl:
        kwargs.setdefault("ssl_handshake_timeout", handshake_timeout)
    elif kwargs.pop("ssl_context", None) is not None:
        raise ValueError(
            f"Cannot {action} {addr} with an ssl_context: it is not a tls:// address "
            "(the context would not be used)"
        )
    return kwargs


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
