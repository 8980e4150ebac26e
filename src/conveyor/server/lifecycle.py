"""What every server (Scheduler, Worker, Nanny) offers for its lifetime: ``await
server`` and ``async with server:`` start it, leaving the block closes it, and
``finished()`` waits until it has closed."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any, Self

__all__ = ["Server"]


class Server:
    """Base of the servers: subclasses define ``start()`` and ``close()`` and set
    ``self._closed`` (an ``asyncio.Event``) once closed."""

    _closed: asyncio.Event

    async def start(self) -> Self:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def __await__(self) -> Generator[Any, None, Self]:
        return self.start().__await__()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def finished(self) -> None:
        """Return once the server has closed (by itself, or asked to)."""
        await self._closed.wait()
