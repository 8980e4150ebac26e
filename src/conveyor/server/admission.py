"""Who a worker or a nanny serves: the cluster's own peers, not whoever reaches its port.

A worker runs what it is sent (scattered data is unpickled, ``Client.run`` calls and
plugins run), and so does a nanny (``run(nanny=True)``, nanny plugins). Both therefore
serve only peers that show a token in their handshake:

- the **cluster token**, made by the scheduler and given to every worker and client that
  registers with it (``register-worker``/``register-client`` replies); workers, clients
  and the scheduler itself (to reach nannies) present it;
- a nanny also accepts the **nanny secret** it gave its own worker process (in that
  process's environment, which the worker takes out at start): the worker presents it
  when it reports, and passes the cluster token on with its report.

So reaching a worker's or nanny's port is no longer enough: a peer must have been able
to register with the scheduler. Without TLS the token travels in the clear; with TLS only
holders of the cluster's certificates can connect at all. Tokens are compared in
constant time; a refused connection is closed with one log line.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

logger = logging.getLogger("conveyor.server")

#: the environment variable through which a nanny hands its worker process the secret
NANNY_SECRET_ENV = "CONVEYOR_NANNY_SECRET"


def presented(comm: Any) -> str:
    """The token a connected peer showed in its handshake ("" if none)."""
    info = getattr(comm, "peer_info", None) or {}
    token = info.get("token") if isinstance(info, dict) else None
    return token if isinstance(token, str) else ""


def matches(token: str, expected: str | None) -> bool:
    """Whether ``token`` is ``expected`` (never true while ``expected`` is unknown)."""
    return expected is not None and hmac.compare_digest(token.encode(), expected.encode())


def refuse(comm: Any, server: str) -> None:
    """Close ``comm``, a peer without the token ``server`` asks for, with one log line."""
    logger.warning(
        "%s refused a connection from %s: it showed no token of this cluster",
        server,
        getattr(comm, "peer_address", "?"),
    )
    comm.abort()
