"""The command groups join one top level: every command is there, in the order `--help` has
always listed them (before the CLI was split into sub-apps)."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from sweeper.cli import app

# as `sweeper --help` printed them from the single-module CLI (commit 6670237)
LISTED = ["run", "recheck", "report", "best", "ensemble", "predict", "import", "studies", "trials",
          "show", "data", "cache"]


def test_help_lists_every_command_in_its_usual_order():
    result = CliRunner().invoke(app, ["--help"], terminal_width=100)
    assert result.exit_code == 0
    commands = re.findall(r"^│ (\w+)\s{2,}", result.output, flags=re.M)
    assert commands[commands.index("run"):] == LISTED


def test_grouped_commands_answer_at_the_top_level():
    for args in (["data", "inspect", "--help"], ["cache", "list", "--help"], ["import", "--help"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        assert "Usage:" in result.output
