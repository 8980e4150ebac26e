"""The servers' recent log lines from the client: ``get_scheduler_logs`` and
``get_worker_logs`` (see :mod:`conveyor.server.logs`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from conveyor.client.control import worker_addresses
from conveyor.client.shape import ClientShape
from conveyor.client.structure import as_list

__all__ = ["LogsMixin"]

Records = list[tuple[str, str]]


class LogsMixin:
    """``Client`` methods that read the servers' log lines."""

    def get_scheduler_logs(self: ClientShape, n: int | None = None) -> Any:
        """The scheduler process's last ``n`` log records (all it keeps if None; it keeps
        ``admin.log-length``), oldest first, as ``(level, line)`` pairs."""
        return self.sync(_scheduler_logs, self, n)

    def get_worker_logs(
        self: ClientShape,
        n: int | None = None,
        workers: str | Iterable[str] | None = None,
        nanny: bool = False,
    ) -> Any:
        """``{worker address: [(level, line), ...]}``: each worker process's last ``n`` log
        records (of ``workers``, addresses or names; all by default); ``nanny=True``
        reads their nannies' logs instead, keyed by the worker's address."""
        return self.sync(_worker_logs, self, n, as_list(workers), nanny)


def _records(reply: Any) -> Records:
    return [(str(level), str(line)) for level, line in reply]


async def _scheduler_logs(client: ClientShape, n: int | None) -> Records:
    return _records(await client._request({"op": "get-logs", "n": n}))


async def _worker_logs(
    client: ClientShape, n: int | None, workers: list[str] | None, nanny: bool
) -> dict[str, Records]:
    assert client.pool is not None
    addresses = await worker_addresses(client, workers)
    targets = dict(zip(addresses, addresses, strict=True))
    if nanny:
        nannies = await client._request({"op": "nannies"})
        orphans = [a for a in addresses if a not in nannies]
        if orphans:
            raise ValueError(f"get_worker_logs(nanny=True): workers without a nanny: {orphans}")
        targets = {a: nannies[a] for a in addresses}
    pool = client.pool

    async def ask(address: str) -> Records:
        peer = await pool.get(address)
        return _records(await peer.request({"op": "get-logs", "n": n}))

    replies = await asyncio.gather(*(ask(t) for t in targets.values()))
    return dict(zip(targets, replies, strict=True))
