"""The scheduler's recent log lines, for ``Client.get_scheduler_logs``
(see :mod:`conveyor.server.logs`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.server.logs import logs_reply, process_logs

if TYPE_CHECKING:
    from conveyor.server.scheduler import Scheduler


class LogsExtension:
    """Answers ``get-logs`` with the scheduler process's last log records."""

    name = "logs"

    def __init__(self, scheduler: Scheduler) -> None:
        process_logs()  # from now on: the lines before the first request count too
        scheduler.handlers["get-logs"] = lambda peer, msg: logs_reply(msg)
