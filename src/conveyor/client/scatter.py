"""``Client.scatter``: put data the client holds into the workers' memory.

Values are pickled here once, sent straight to the chosen workers (every one of them
with ``broadcast=True``), and then announced to the scheduler, which records where they
are; the returned futures hold them like any result.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from dask.base import tokenize
from dask.utils import typename

from conveyor.client.structure import as_list
from conveyor.protocol import dumps

if TYPE_CHECKING:
    from conveyor.client.shape import ClientShape


class ScatterMixin:
    """The Client's ``scatter``."""

    def scatter(
        self: ClientShape,
        data: Any,
        workers: str | Iterable[str] | None = None,
        broadcast: bool = False,
        hash: bool = True,
    ) -> Any:
        """Move data into the workers' memory; return Futures pointing at it."""
        return self.sync(_scatter, self, data, as_list(workers), broadcast, hash)


def _short_typename(value: Any) -> str:
    return str(typename(type(value))).rsplit(".", 1)[-1]


async def _scatter_targets(client: ClientShape, workers: list[str] | None) -> list[str]:
    assert client.scheduler is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + client._timeout
    while True:
        ncores = await client.scheduler.request({"op": "ncores"})
        targets = sorted(ncores)
        if workers:
            targets = [w for w in targets if w in workers]
        if targets:
            return targets
        if loop.time() > deadline:
            raise TimeoutError(f"no worker to scatter to after {client._timeout} s")
        await asyncio.sleep(0.05)


async def _update_worker(
    client: ClientShape, worker: str, data: dict[Any, Any]
) -> tuple[str, dict[Any, int]]:
    assert client.pool is not None
    peer = await client.pool.get(worker)
    reply = await peer.request({"op": "update-data", "data": data})
    return worker, dict(reply["nbytes"])


async def _scatter(
    client: ClientShape, data: Any, workers: list[str] | None, broadcast: bool, hash: bool
) -> Any:
    assert client.scheduler is not None and client.pool is not None
    single = not isinstance(data, (list, tuple, set, frozenset, dict))
    if isinstance(data, dict):
        items = list(data.items())
    else:
        values = [data] if single else list(data)
        items = [
            (f"{_short_typename(v)}-{tokenize(v) if hash else uuid.uuid4().hex}", v) for v in values
        ]
    targets = await _scatter_targets(client, workers)
    placement: dict[str, dict[Any, Any]] = {w: {} for w in targets}
    for i, (key, value) in enumerate(items):
        ser = dumps(value)
        for w in targets if broadcast else [targets[i % len(targets)]]:
            placement[w][key] = ser
    keys = [key for key, _ in items]
    futures = dict(zip(keys, client._futures(keys), strict=True))
    replies = await asyncio.gather(
        *(_update_worker(client, w, d) for w, d in placement.items() if d)
    )
    who_has: dict[Any, list[str]] = {}
    nbytes: dict[Any, int] = {}
    for w, sizes in replies:
        for key, n in sizes.items():
            who_has.setdefault(key, []).append(w)
            nbytes[key] = n
    await client.scheduler.request({"op": "update-data", "who_has": who_has, "nbytes": nbytes})
    if single:
        return futures[items[0][0]]
    if isinstance(data, dict):
        return futures
    out = [futures[k] for k, _ in items]
    return type(data)(out) if isinstance(data, (tuple, set, frozenset)) else out
