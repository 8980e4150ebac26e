"""A poison task with siblings waiting on the same worker, with real processes: the
nanny's record of what the worker was running blames the poison task alone."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from conveyor import Client, KilledWorker, LocalCluster
from conveyor.testing.bounded import bounded
from conveyor.testing.cluster import until_sync

pytestmark = pytest.mark.e2e

# worker processes cannot import this test module: its functions travel by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def poison(trigger: str) -> None:
    """Kill the worker process, once ``trigger`` exists."""
    while not os.path.exists(trigger):
        time.sleep(0.01)
    os._exit(1)


def inc(x: int) -> int:
    return x + 1


def test_a_poison_task_fails_alone_and_its_waiting_siblings_finish(tmp_path: Path) -> None:
    trigger = str(tmp_path / "die")
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        bad = client.submit(poison, trigger, key="poison")
        siblings = client.map(inc, range(4), key=[f"sibling-{i}" for i in range(4)])
        # siblings wait on the worker behind the poison task, which runs (the others
        # wait in the scheduler's queue)
        until_sync(
            lambda: len(next(iter(client.processing().values()), ())) >= 3,
            timeout=30,
            what="the siblings on the worker",
        )
        with bounded(client, 120, "a poison task and its siblings", [bad]) as deadline:
            Path(trigger).touch()
            with pytest.raises(KilledWorker) as info:
                bad.result(timeout=deadline.remaining())
            text = str(info.value)
            assert "'poison'" in text and "4 different workers" in text
            assert "exit code 1" in text
            assert [f.result(timeout=deadline.remaining()) for f in siblings] == [1, 2, 3, 4]
        story = client.run_on_scheduler(
            lambda dask_scheduler: {
                k: dask_scheduler.tasks[k].suspicious for k in ["poison", "sibling-0"]
            }
        )
        assert story == {"poison": 4, "sibling-0": 0}
