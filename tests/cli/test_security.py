"""Passwords never shown, study names never escape trials/, checkpoints load without pickle."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.store import redact
from sweeper.testing import tiny_space, write_space

runner = CliRunner()
# password p{w%d@x: '{' as is, '%' and '@' percent-encoded as a URL needs them
BAD_PG = "postgresql://alice:p{w%25d%40x@127.0.0.1:1/sweeps"
SECRETS = ["p{w%25d%40x", "p{w%d@x", "p{w"]


def test_redact_hides_passwords_with_special_characters():
    assert redact(BAD_PG) == "postgresql://alice:***@127.0.0.1:1/sweeps"


@pytest.mark.parametrize("command", [
    ["report", "--study", "s"], ["best", "--study", "s"], ["studies"], ["trials", "--study", "s"],
])
def test_unreachable_store_message_never_shows_the_password(command):
    pytest.importorskip("psycopg")
    result = runner.invoke(app, [*command, "--storage", BAD_PG])
    assert result.exit_code == 2
    assert "cannot open study store postgresql://alice:***@127.0.0.1:1/sweeps" in result.output
    assert not any(s in result.output for s in SECRETS)


def test_run_against_an_unreachable_store_never_shows_the_password(colour_folder, tmp_path, monkeypatch):
    pytest.importorskip("psycopg")
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path / "s.yaml", tiny_space(colour_folder))
    result = runner.invoke(app, ["run", "--space", str(space), "--storage", BAD_PG])
    assert result.exit_code == 2
    assert not any(s in result.output for s in SECRETS)
    assert "***" in result.output


@pytest.mark.parametrize("name", ["../up", "a/b", "/etc", "x" * 129, "a\x00b", ".hidden"])
def test_study_names_from_the_command_line_are_checked(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["report", "--study", name])
    assert result.exit_code == 2 and "--study" in result.output
    assert not (tmp_path / "trials").exists()


def test_checkpoints_load_with_weights_only(tmp_path):
    import torch

    from sweeper.train import model as models

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": models.create("test_resnet", 3, False).state_dict(),
                "payload": object()}, path)  # an arbitrary object needs pickle
    with pytest.raises(Exception, match="cannot load checkpoint"):
        models.create("test_resnet", 3, str(path))
