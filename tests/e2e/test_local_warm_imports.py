"""LocalCluster worker processes import at start what the creating process already uses
(``local.warm-imports-if-loaded``)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import dask.config
import pytest

from conveyor import Client, LocalCluster
from conveyor.deploy.local import _worker_process_config

pytestmark = pytest.mark.e2e

# worker processes cannot import this test module: its functions travel by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])

LOADED = "conveyor_probe_loaded"
NOT_LOADED = "conveyor_probe_not_loaded"


@pytest.fixture
def probes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Two importable modules, on the path of this process and of worker processes; this
    process imports the first one only."""
    for name in (LOADED, NOT_LOADED):
        (tmp_path / f"{name}.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    importlib.import_module(LOADED)
    try:
        yield
    finally:
        for name in (LOADED, NOT_LOADED):
            sys.modules.pop(name, None)


def _warm(cfg: dict[str, object]) -> object:
    return cfg["conveyor"]["worker"]["warm-imports"]  # type: ignore[index]


@pytest.mark.usefixtures("probes")
def test_the_worker_config_adds_the_loaded_modules_only() -> None:
    listed = {"conveyor.local.warm-imports-if-loaded": [NOT_LOADED, LOADED, "numpy"]}
    with dask.config.set({**listed, "conveyor.worker.warm-imports": ["numpy"]}):
        assert _warm(_worker_process_config()) == ["numpy", LOADED]
    with dask.config.set({"conveyor.local.warm-imports-if-loaded": [NOT_LOADED]}):
        assert _worker_process_config() is dask.config.global_config


def _imported(names: list[str]) -> dict[str, bool]:
    return {name: name in sys.modules for name in names}


@pytest.mark.usefixtures("probes")
def test_worker_processes_import_what_this_process_uses() -> None:
    listed = {"conveyor.local.warm-imports-if-loaded": [LOADED, NOT_LOADED]}
    with (
        dask.config.set(listed),
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        seen = client.run(_imported, [LOADED, NOT_LOADED])
    assert list(seen.values()) == [{LOADED: True, NOT_LOADED: False}] * 2
