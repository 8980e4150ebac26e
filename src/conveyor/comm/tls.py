"""TLS transport: the TCP transport's framing and flow control inside asyncio's SSL layer.

``tls://host:port`` behaves like ``tcp://host:port`` (same :class:`~conveyor.comm.tcp.TCPComm`,
same limits and buffered, zero-copy receive: asyncio's SSL transport decrypts straight
into the frame buffers), with every byte encrypted and both ends authenticated. The
``ssl_context`` comes from :class:`conveyor.comm.security.Security`; this module only
checks that it is one conveyor accepts: mutual TLS (the peer's certificate is always
verified) and nothing older than TLS 1.2.

The TLS handshake must finish within ``ssl_handshake_timeout`` (by default
``conveyor.comm.timeouts.handshake``); a peer that stays silent, speaks plain TCP or
presents no or a foreign certificate is disconnected by asyncio's SSL layer before any
conveyor code sees the connection (so without a log line on the listening side; asyncio
logs such failures only in its debug mode). The connecting side gets a clear error: a
refused certificate or TLS version raises at once (not retried) from
:func:`conveyor.comm.connect`.
"""

from __future__ import annotations

import ssl
from typing import Any

from conveyor import config
from conveyor.comm.core import Backend, CommClosedError, Handler
from conveyor.comm.tcp import TCPComm, TCPListener, _Limits, open_comm

__all__ = ["TLSBackend", "TLSListener", "TLSRefusedError", "check_ssl_context"]

_DEFAULT_HANDSHAKE_TIMEOUT = 10.0
_OLD_VERSIONS = frozenset(
    {
        ssl.TLSVersion.MINIMUM_SUPPORTED,
        ssl.TLSVersion.SSLv3,
        ssl.TLSVersion.TLSv1,
        ssl.TLSVersion.TLSv1_1,
    }
)


class TLSRefusedError(CommClosedError):
    """The TLS handshake failed: a certificate or TLS version was refused, by this side
    or by the peer. :func:`conveyor.comm.connect` does not retry it."""


def check_ssl_context(context: object, server_side: bool, addr: str) -> ssl.SSLContext:
    """Return ``context`` if conveyor may use it for ``addr``, else raise ``ValueError``.

    It must be an :class:`ssl.SSLContext` made for the right side, that verifies the
    peer's certificate (``CERT_REQUIRED``: conveyor speaks mutual TLS only) and refuses
    TLS older than 1.2.
    """
    action = "listen on" if server_side else "connect to"
    if context is None:
        raise ValueError(
            f"Cannot {action} {addr}: a tls:// address needs an ssl_context (pass a "
            "conveyor.Security with TLS credentials for this role, or use tcp://)"
        )
    if not isinstance(context, ssl.SSLContext):
        raise ValueError(
            f"Cannot {action} {addr}: ssl_context must be an ssl.SSLContext, "
            f"got {type(context).__name__}"
        )
    if context.verify_mode != ssl.CERT_REQUIRED:
        raise ValueError(
            f"Cannot {action} {addr}: the ssl_context does not require the peer's "
            "certificate (verify_mode must be CERT_REQUIRED; conveyor speaks mutual TLS only)"
        )
    if context.minimum_version in _OLD_VERSIONS:
        raise ValueError(
            f"Cannot {action} {addr}: the ssl_context allows "
            f"{context.minimum_version.name}; conveyor requires TLS 1.2 or newer"
        )
    if server_side and context.protocol == ssl.PROTOCOL_TLS_CLIENT:
        raise ValueError(f"Cannot listen on {addr}: the ssl_context is a client-side one")
    if not server_side and context.protocol == ssl.PROTOCOL_TLS_SERVER:
        raise ValueError(f"Cannot connect to {addr}: the ssl_context is a server-side one")
    return context


def _handshake_timeout(value: float | None) -> float:
    if value is None:
        value = config.parse_duration(config.get("comm.timeouts.handshake", None))
    if value is None:
        return _DEFAULT_HANDSHAKE_TIMEOUT
    if value <= 0:
        raise ValueError(f"ssl_handshake_timeout must be positive, got {value!r}")
    return float(value)


class TLSListener(TCPListener):
    """Accepts TLS connections and runs ``handler`` on each new comm, once the TLS
    handshake (which verifies the peer's certificate) has succeeded."""

    scheme = "tls"

    def __init__(
        self,
        loc: str,
        handler: Handler,
        limits: _Limits,
        ssl_context: ssl.SSLContext,
        handshake_timeout: float,
    ) -> None:
        super().__init__(loc, handler, limits)
        self._ssl_context = ssl_context
        self._handshake_timeout = handshake_timeout

    def _server_options(self) -> dict[str, Any]:
        return {"ssl": self._ssl_context, "ssl_handshake_timeout": self._handshake_timeout}


class TLSBackend(Backend):
    """The ``tls://`` transport.

    Keyword arguments: ``ssl_context`` (required; see :func:`check_ssl_context`),
    ``ssl_handshake_timeout`` (seconds; default ``conveyor.comm.timeouts.handshake``),
    and the TCP transport's limits (``max_frame_size``, ``max_frames``,
    ``max_message_size``). The peer's host name is not checked: cluster certificates
    name roles, not hosts (see :class:`conveyor.comm.security.Security`).
    """

    private = True
    uses_ssl = True

    async def connect(
        self,
        loc: str,
        *,
        ssl_context: object = None,
        ssl_handshake_timeout: float | None = None,
        **kwargs: Any,
    ) -> TCPComm:
        context = check_ssl_context(ssl_context, server_side=False, addr=f"tls://{loc}")
        limits = _Limits.from_config(**kwargs)
        options: dict[str, Any] = {
            "ssl": context,
            "ssl_handshake_timeout": _handshake_timeout(ssl_handshake_timeout),
        }
        if not context.check_hostname:
            # no host name to check, and none to send: an IP address is not a valid SNI
            options["server_hostname"] = ""
        try:
            return await open_comm(loc, limits, scheme="tls", **options)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError) as e:
            # A TLS server that refuses a certificate or version (TLS 1.2: during the
            # handshake) aborts the connection: the TCP connection was accepted, so
            # this is a refusal, not a server that is not listening yet.
            raise TLSRefusedError(
                f"tls://{loc} closed the connection during the TLS handshake "
                f"({type(e).__name__}): it may have refused this side's certificate "
                "(is it signed by the cluster's CA?) or TLS version, or not speak TLS"
            ) from e

    def listen(
        self,
        loc: str,
        handler: Handler,
        *,
        ssl_context: object = None,
        ssl_handshake_timeout: float | None = None,
        **kwargs: Any,
    ) -> TLSListener:
        context = check_ssl_context(ssl_context, server_side=True, addr=f"tls://{loc}")
        return TLSListener(
            loc,
            handler,
            _Limits.from_config(**kwargs),
            context,
            _handshake_timeout(ssl_handshake_timeout),
        )
