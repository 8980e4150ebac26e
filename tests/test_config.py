"""conveyor.config: defaults in dask.config, overrides, and value parsing."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import dask.config
import pytest

from conveyor import config


def registered_defaults() -> dict[str, Any]:
    """The conveyor defaults as registered with dask (tests may override the live config)."""
    merged: dict[str, Any] = dask.config.merge(*dask.config.defaults)
    return dict(merged["conveyor"])


def test_defaults_are_registered_with_dask() -> None:
    d = registered_defaults()
    assert d["scheduler"] == {
        "allowed-failures": 3,
        "worker-ttl": "5 minutes",
        "idle-timeout": None,
        "validate": False,
        "transition-log-length": 100_000,
        "events-log-length": 100_000,
        "unknown-task-duration": "500ms",
        "default-task-durations": {},
        "worker-saturation": 1.1,
        "bandwidth": 100_000_000,
        "delete-interval": "1 minute",
        "synchronize-worker-interval": "1 minute",
        "allow-remote-code": False,
        "dashboard": {"enabled": True, "address": "127.0.0.1:8787"},
    }
    assert d["worker"] == {
        "heartbeat-interval": "500ms",
        "warm-imports": ["numpy"],
        "resources": {},
        "connections": {"outgoing": 50, "incoming": 10},
        "memory": {
            "target": 0.6,
            "spill": 0.7,
            "pause": 0.8,
            "terminate": 0.95,
            "monitor-interval": "100ms",
            "spill-compression": None,
        },
        "transfer": {"message-bytes-limit": "50MB"},
    }
    assert d["comm"] == {
        "timeouts": {"connect": "30s", "tcp": "30s", "handshake": "10s"},
        "max-frame-size": "1GiB",
        "max-message-size": "4GiB",
        "max-outgoing-buffer": "512MiB",
        "max-connections": 10000,
        "require-encryption": False,
        "tls": {
            "ca-file": None,
            "ciphers": None,
            "min-version": "1.2",
            "scheduler": {"cert": None, "key": None},
            "worker": {"cert": None, "key": None},
            "client": {"cert": None, "key": None},
        },
    }
    # keys nothing read were removed: a client's loss is its connection's close, and
    # connections retry until conveyor.comm.timeouts.connect
    assert "client" not in d and "retry" not in d["comm"]
    assert d["admin"] == {"log-length": 10_000}
    assert d["local"] == {
        "directory": None,
        "warm-imports-if-loaded": ["pandas", "dask.array", "dask.dataframe"],
    }


def test_defaults_are_readable_through_get() -> None:
    assert config.get("scheduler.allowed-failures") == 3
    assert dask.config.get("conveyor.scheduler.allowed-failures") == 3
    assert config.get("scheduler.allowed_failures") == 3  # dashes and underscores alike
    assert config.get("worker.memory.target") == 0.6
    assert config.get("comm.timeouts.connect") == "30s"
    assert config.get("local.directory") is None


def test_get_missing_key() -> None:
    with pytest.raises(KeyError):
        config.get("scheduler.no-such-key")
    assert config.get("scheduler.no-such-key", default=42) == 42


def test_dask_config_set_overrides() -> None:
    with dask.config.set({"conveyor.scheduler.allowed-failures": 7}):
        assert config.get("scheduler.allowed-failures") == 7
    assert config.get("scheduler.allowed-failures") == 3


def test_environment_variable_overrides_default() -> None:
    code = (
        "from conveyor import config; "
        "print(config.get('scheduler.allowed-failures'), config.get('comm.timeouts.connect'))"
    )
    env = {
        **os.environ,
        "DASK_CONVEYOR__SCHEDULER__ALLOWED_FAILURES": "5",
        "DASK_CONVEYOR__COMM__TIMEOUTS__CONNECT": "2s",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", "2s"]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (2, 2.0),
        (0.25, 0.25),
        (0, 0.0),
        ("2s", 2.0),
        ("500ms", 0.5),
        ("5 minutes", 300.0),
        ("1.5h", 5400.0),
        ("3", 3.0),
        (timedelta(seconds=4), 4.0),
    ],
)
def test_parse_duration(value: object, seconds: float | None) -> None:
    assert config.parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "soon", "2 parsecs", "-1s", -1, float("nan"), True, [1]])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="Invalid duration"):
        config.parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (None, None),
        (0, 0),
        (1234, 1234),
        (1.5e3, 1500),
        ("400MB", 400_000_000),
        ("400 MB", 400_000_000),
        ("2GiB", 2 * 2**30),
        ("1kiB", 1024),
        ("100", 100),
    ],
)
def test_parse_size(value: object, size: int | None) -> None:
    assert config.parse_size(value) == size


@pytest.mark.parametrize("value", ["", "lots", "5 foos", -1, "-1MB", float("inf"), False, {}])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="Invalid size"):
        config.parse_size(value)


def test_system_resources() -> None:
    assert config.system_memory() > 2**20
    assert 1 <= config.cpu_count() <= (os.cpu_count() or 1)


def test_memory_limit_auto_is_a_share_of_system_memory() -> None:
    total = config.system_memory()
    assert config.memory_limit("auto") == total
    assert config.memory_limit("auto", nthreads_share=0.25) == int(total * 0.25)


@pytest.mark.parametrize("value", [None, 0, "0", "0 B"])
def test_memory_limit_no_limit(value: object) -> None:
    assert config.memory_limit(value) is None


def test_memory_limit_fraction_of_system_memory() -> None:
    total = config.system_memory()
    assert config.memory_limit(0.5) == int(total * 0.5)
    assert config.memory_limit("0.5") == int(total * 0.5)
    assert config.memory_limit(1) == total


def test_memory_limit_bytes() -> None:
    assert config.memory_limit("400MB") == 400_000_000
    assert config.memory_limit(400_000_000) == 400_000_000
    assert config.memory_limit("400000000") == 400_000_000
    # the share applies to "auto" only
    assert config.memory_limit("400MB", nthreads_share=0.5) == 400_000_000


def test_memory_limit_is_capped_at_system_memory() -> None:
    total = config.system_memory()
    assert config.memory_limit(total * 10) == total
    assert config.memory_limit("100 PB") == total


@pytest.mark.parametrize("value", ["lots", "", "-1", -0.5, -100, True, [1]])
def test_memory_limit_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="Invalid memory_limit"):
        config.memory_limit(value)


@pytest.mark.parametrize("share", [0, -1, 1.5])
def test_memory_limit_rejects_bad_share(share: float) -> None:
    with pytest.raises(ValueError, match="nthreads_share"):
        config.memory_limit("auto", nthreads_share=share)
