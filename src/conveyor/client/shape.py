"""What the Client's mixins may use of the Client: a structural type for ``self``.

The Client is assembled from mixins, one module per part of its API (collections,
control, events, ...). A mixin method annotates ``self`` with :class:`ClientShape`, which
lists the members of the core client it calls; mypy then checks those calls, and the
Client (which has them all) satisfies it. Add a member here when a mixin needs one.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from conveyor.client.future import Future, FutureState
    from conveyor.rpc import Msg, Peer, PeerPool


class ClientShape(Protocol):
    """The core client's members that its mixins use."""

    id: str
    asynchronous: bool
    status: str
    loop: asyncio.AbstractEventLoop | None
    scheduler: Peer | None
    pool: PeerPool | None
    _timeout: float
    futures: dict[Any, FutureState]
    #: the cluster object given to (or started by) the client, if any
    cluster: Any
    #: the scheduler's dashboard URL, as it said when the client registered (or None)
    _scheduler_dashboard: str | None
    scheduler_file: str | None
    _lock: threading.Lock
    _handlers: dict[str, Callable[[Peer, Msg], Any]]

    def sync(
        self, fn: Callable[..., Any], *args: Any, timeout: Any = None, **kwargs: Any
    ) -> Any: ...

    def gather(self, futures: Any, errors: str = "raise", direct: bool | None = None) -> Any: ...

    def submit(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Future: ...

    def _graph_to_futures(
        self,
        dsk: Any,
        keys: list[Any],
        *,
        workers: str | Iterable[str] | None = None,
        allow_other_workers: bool = False,
        resources: dict[str, float] | None = None,
        retries: int | None = None,
        priority: float = 0,
        actors: Any = None,
    ) -> dict[Any, Future]: ...

    async def _request(self, msg: Msg) -> Any: ...

    async def _gather(self, futures: Any, errors: str = "raise") -> Any: ...

    def _adopt_future(self, key: Any) -> Future: ...

    def _futures(self, keys: list[Any]) -> list[Future]: ...

    def _send(self, msg: Msg) -> None: ...

    def close(self, timeout: float | str | None = None) -> Any: ...
