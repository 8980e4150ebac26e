"""The servers' recent log lines, read from the client."""

from __future__ import annotations

import asyncio
import logging

import pytest

from conveyor.server.logs import process_logs
from conveyor.testing.cluster import in_process_cluster


def test_the_client_reads_the_scheduler_and_worker_logs() -> None:
    async def main() -> None:
        async with in_process_cluster(n_workers=2) as (_, workers, c):
            logging.getLogger("conveyor.scheduler").warning("a line to find %d", 42)
            records = await c.get_scheduler_logs()
            assert any(
                level == "WARNING" and "a line to find 42" in line for level, line in records
            )
            assert await c.get_scheduler_logs(n=1) == records[-1:]
            assert await c.get_scheduler_logs(n=0) == []
            by_worker = await c.get_worker_logs(n=5)
            assert set(by_worker) == {w.address for w in workers}
            assert all(len(r) <= 5 for r in by_worker.values())
            one = await c.get_worker_logs(workers=[workers[0].name])
            assert list(one) == [workers[0].address]
            with pytest.raises(ValueError, match="without a nanny"):
                await c.get_worker_logs(nanny=True)
            with pytest.raises(Exception, match="n must be a count"):
                await c.get_scheduler_logs(n=-1)

    asyncio.run(main())


def test_the_buffer_keeps_only_the_last_records() -> None:
    buffer = process_logs()
    assert process_logs() is buffer  # one per process
    length = buffer.records.maxlen
    assert length is not None
    logger = logging.getLogger("conveyor.test")
    for i in range(length + 10):
        logger.warning("record %d", i)
    assert len(buffer.last()) == length
    assert buffer.last(1)[0][1].endswith(f"record {length + 9}")
