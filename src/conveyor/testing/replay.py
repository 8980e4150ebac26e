"""Replaying a simulation in fresh interpreters: a seed must give the same run anywhere.

Both state machines iterate sets of strings, so a run replays exactly across processes
only under the same ``PYTHONHASHSEED``; :func:`replay_digests` runs a script (which
prints a digest of its simulated run) in ``runs`` fresh interpreters under one hash
seed and returns the distinct digests it printed: one, if the run replays.
"""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["replay_digests"]


def replay_digests(script: str, hash_seed: int, runs: int = 2, timeout: float = 60) -> set[str]:
    """The distinct outputs of ``script`` run ``runs`` times under ``hash_seed``."""
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    return {
        subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=timeout,
        ).stdout.strip()
        for _ in range(runs)
    }
