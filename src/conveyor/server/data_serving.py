"""A worker answering ``get-data``: its values for peers and clients, with a bound.

A reply holds memory until it is written: the values' pickles, and the copies of data
read back from disk to serve it. Many workers fetching from one at the same time could
make it hold many such replies, so a worker serves at most
``conveyor.worker.connections.incoming`` transfers to other workers at once. A worker
asking beyond that gets ``{"status": "busy"}`` at once: its state machine fetches the
keys from another holder, or from this one after a short wait (see
:mod:`conveyor.core.worker`). A busy answer costs no failure, no timeout and no report to
the scheduler. Clients gathering results are neither refused (the user waits for them,
and they have nowhere else to go) nor counted: a client that stops reading must not
keep this worker from serving its peers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from conveyor.core.types import Key
from conveyor.rpc import Msg, Peer
from conveyor.rpc.data import pack_data
from conveyor.rpc.peer import Answer
from conveyor.server.spill import SpillBuffer

#: the answer to a worker's fetch beyond the bound
BUSY: dict[str, str] = {"status": "busy"}


def is_busy(reply: Any) -> bool:
    """Whether ``reply`` (to ``get-data``) says the peer was busy."""
    return isinstance(reply, dict) and reply.get("status") == "busy"


class DataServer:
    """Answers ``get-data`` from ``data``; ``sizes`` gives the known size of a key (or
    None), so values are not measured again."""

    def __init__(self, data: SpillBuffer, sizes: Callable[[Key], int | None], limit: int) -> None:
        if limit < 1:
            raise ValueError(
                f"conveyor.worker.connections.incoming must be at least 1, got {limit}"
            )
        self.data = data
        self.sizes = sizes
        #: transfers to workers served at once, at most
        self.limit = limit
        #: replies to workers being made or written now
        self.serving = 0
        #: fetches answered busy so far
        self.busy_answers = 0

    def get_data(self, peer: Peer, msg: Msg) -> Any:
        """The ``get-data`` handler: ``{"keys": [...], "who": worker address or None}``."""
        keys = msg["keys"]
        if msg.get("who") is None:  # a client
            if self.data.spilled(keys):
                return self._get_spilled_for_client(keys)
            return self._pack(keys)
        if self.serving >= self.limit:
            self.busy_answers += 1
            return BUSY
        self.serving += 1
        try:
            if self.data.spilled(keys):
                return self._get_spilled(keys)
            return Answer(self._pack(keys), self._written)
        except BaseException:
            self.serving -= 1
            raise

    async def _get_spilled(self, keys: list[Key]) -> Answer:
        try:
            await self.data.load(keys)  # read off the loop, then served from memory
            return Answer(self._pack(keys), self._written)
        except BaseException:
            self.serving -= 1
            raise

    async def _get_spilled_for_client(self, keys: list[Key]) -> dict[str, Any]:
        await self.data.load(keys)
        return self._pack(keys)

    def _pack(self, keys: list[Key]) -> dict[str, Any]:
        sizes: Mapping[Key, int] = {
            key: size for key in keys if (size := self.sizes(key)) is not None
        }
        return pack_data(self.data, keys, sizes)  # sized when made: not measured again

    def _written(self) -> None:
        self.serving -= 1
