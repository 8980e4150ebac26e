"""Preloads: the operator's module or file runs its setup once the server listens and
its teardown as it closes, with command-line arguments when its setup is a command."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conveyor import Scheduler, Worker
from conveyor.server.preload import make_preloads

SCRIPT = """
import click

EVENTS = []

def conveyor_setup(server):
    EVENTS.append(("setup", type(server).__name__, server.address))

async def conveyor_teardown(server):
    EVENTS.append(("teardown", type(server).__name__, server.address))
"""

COMMAND = """
import click

SEEN = []

@click.command()
@click.option("--value", type=int, default=0)
def conveyor_setup(server, value):  # the server first; the options from the arguments
    SEEN.append((type(server).__name__, value))
"""


def test_setup_and_teardown_run_in_the_scheduler_and_the_worker(tmp_path: Path) -> None:
    path = tmp_path / "ops_setup.py"
    path.write_text(SCRIPT)

    async def main() -> None:
        s = Scheduler(host="127.0.0.1", port=0, dashboard=False, preload=str(path))
        [preload] = s.preloads
        events = preload.module.EVENTS
        async with s:
            assert events == [("setup", "Scheduler", s.address)]
            async with Worker(s.address, nthreads=1, preload=[str(path)]) as w:
                [wpre] = w.preloads
                assert wpre.module.EVENTS[-1] == ("setup", "Worker", w.address)
            assert wpre.module.EVENTS[-1] == ("teardown", "Worker", w.address)
        assert events[-1] == ("teardown", "Scheduler", s.address)

    asyncio.run(main())


def test_arguments_go_to_a_setup_command(tmp_path: Path) -> None:
    path = tmp_path / "ops_command.py"
    path.write_text(COMMAND)

    async def main() -> None:
        s = Scheduler(port=0, dashboard=False, preload=str(path), preload_argv=["--value=7"])
        async with s:
            assert s.preloads[0].module.SEEN == [("Scheduler", 7)]

    asyncio.run(main())


def test_bad_preloads_are_refused_when_the_server_is_made(tmp_path: Path) -> None:
    plain = tmp_path / "plain_setup.py"
    plain.write_text(SCRIPT)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_preloads(str(tmp_path / "missing.py"))
    with pytest.raises(ModuleNotFoundError):
        make_preloads("no_such_module_for_conveyor")
    with pytest.raises(ValueError, match="is not a click command"):
        make_preloads(str(plain), ["--value=1"])
    with pytest.raises(ValueError, match="2 lists of arguments for 1 preloads"):
        make_preloads([str(plain)], [["a"], ["b"]])
