"""The scheduler side of ``Client.explain``: why a task is where it is."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from conveyor.core.explain import explain
from conveyor.rpc import Msg, Peer

if TYPE_CHECKING:
    from conveyor.server.scheduler import Scheduler


class ExplainExtension:
    """Answers ``{"op": "explain", "key": key}`` with one sentence about the task (see
    :func:`conveyor.core.explain.explain`)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        scheduler.handlers["explain"] = self._explain

    def _explain(self, peer: Peer, msg: Msg) -> str:
        return explain(self.scheduler.state, msg["key"], time.time())
