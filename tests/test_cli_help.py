"""``conveyor <command> --help`` lists every option with its default."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from conveyor.cli.main import main


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_option_shows_its_default(command: str) -> None:
    cmd = main.commands[command]
    shown = [p for p in cmd.params if isinstance(p, click.Option) and not p.hidden]
    assert shown
    missing = [p.name for p in shown if not p.show_default]
    assert not missing, f"conveyor {command}: options without a default in --help: {missing}"
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    for p in shown:
        assert p.opts[0] in result.output
    assert result.output.count("[default:") >= len(shown) - 1  # flags pair up on one line
