"""A resume state is data, checked before use: one planted where a trial resumes from (its
trials folder, a folder store, S3) never runs code, and one that is damaged, of another trial
or of another configuration is not used: the trial trains from epoch 0 and its log says why."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path

import pytest
import stores
import torch

from sweeper import artifacts
from sweeper.data import datasets
from sweeper.spec.sweep_spec import parse_spec
from sweeper.spec.trial_config import resolve
from sweeper.testing import tiny_space
from sweeper.train import resume
from sweeper.train.worker import run_trial


@pytest.fixture(scope="module", autouse=True)
def _stop_s3_server():
    yield
    stores.stop_server()


class Payload:
    """Unpickled, it creates the marker file (what an attacker's code would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _configs(folder, tmp_path, lr: float = 0.05):
    """Trial 0 and its retry, trial 1 (the same configuration)."""
    spec = parse_spec(tiny_space(folder, study="safe", train={"epochs": 2, "batch_size": 8}))
    cache = datasets.prepare(datasets.Source(str(folder), None, 0.2), 16, tmp_path / "cache")
    return [resolve(spec, n, {"lr": lr}, tmp_path / "trials", cache) for n in (0, 1)]


def _run(config) -> tuple[list[dict], str]:
    events = []
    assert run_trial(config, lambda e: events.append(e) or True) == "complete"
    return events, (Path(config.trial_dir) / "log.txt").read_text()


def _first_epoch_state(config) -> bytes:
    """The resume.pt trial 0 leaves after its first epoch (stopped there)."""
    assert run_trial(config, lambda e: e["event"] != "epoch") == "stopped"
    return (Path(config.trial_dir) / resume.RESUME).read_bytes()


def _planted(kind: str, marker: Path, config) -> bytes:
    """`pickle`: an older sweeper's format (a bare torch.save); `header`: today's format with a
    valid header for the trial and a payload that runs code when unpickled."""
    buffer = io.BytesIO()
    torch.save({"model": Payload(marker), "metrics": [{"epoch": 1}]}, buffer)
    payload = buffer.getvalue()
    if kind == "pickle":
        return payload
    header = {**resume.identity(config), "epoch": 1, "sha256": hashlib.sha256(payload).hexdigest(),
              "bytes": len(payload)}
    return resume.MAGIC + json.dumps(header).encode() + b"\n" + payload


def _place(where: str, data: bytes, config, tmp_path, monkeypatch):
    """The retry's config, resuming from `data` put in a trials folder or an artifact store."""
    if where == "trials":
        path = Path(config.trial_dir).parent / "0" / resume.RESUME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return dataclasses.replace(config, resume_from=str(path), resume_trial=0)
    url = stores.make(where, tmp_path, monkeypatch)
    ident = artifacts.artifact_id("ab12", resume.RESUME)
    artifacts.open_store(url).put_bytes(ident, data)
    return dataclasses.replace(config, resume_from=resume.ARTIFACT + ident, resume_trial=0, artifacts=url,
                               artifact_key="cd34")


@pytest.mark.parametrize("kind", ["pickle", "header"])
@pytest.mark.parametrize("where", ["trials", "folder", "s3"])
def test_a_planted_state_never_runs_its_code_and_the_trial_trains_from_epoch_0(
        where, kind, colour_folder, tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    first, retry = _configs(colour_folder, tmp_path)
    retry = _place(where, _planted(kind, marker, first), retry, tmp_path, monkeypatch)
    events, log = _run(retry)
    assert not marker.exists()
    assert "resumed" not in [e["event"] for e in events]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]
    reason = "older sweeper" if kind == "pickle" else "its data cannot be read"
    assert f"Not resumed from {retry.resume_from}: " in log and reason in log, log
    assert "training from epoch 0" in log


def test_a_state_of_the_same_trial_resumes_it(colour_folder, tmp_path):
    first, retry = _configs(colour_folder, tmp_path)
    _first_epoch_state(first)
    events, log = _run(dataclasses.replace(retry, resume_from=str(Path(first.trial_dir) / resume.RESUME),
                                           resume_trial=0))
    assert [e["event"] for e in events].count("resumed") == 1
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [2]  # epoch 1 was trial 0's
    assert "Resumed after epoch 1" in log


@pytest.mark.parametrize("damage, reason", [
    ("truncated", "truncated or corrupt"),
    ("flipped", "truncated or corrupt"),
    ("other trial", "the state of trial 0, not trial 3"),
    ("other configuration", "the state of another configuration"),
    ("outside", "outside this study's trials folder"),
])
def test_a_damaged_or_foreign_state_is_not_used_and_the_log_says_why(damage, reason, colour_folder, tmp_path):
    first, retry = _configs(colour_folder, tmp_path)
    data = _first_epoch_state(first)
    source, expected = Path(first.trial_dir) / resume.RESUME, 0
    if damage == "truncated":
        source.write_bytes(data[:-1000])
    elif damage == "flipped":
        source.write_bytes(data[:-100] + bytes([data[-100] ^ 1]) + data[-99:])
    elif damage == "other trial":
        expected = 3
    elif damage == "other configuration":
        retry = _configs(colour_folder, tmp_path / "other", lr=0.07)[1]
        retry = dataclasses.replace(retry, trial_dir=str(Path(first.trial_dir).parent / "1"))
    else:
        source = tmp_path / "elsewhere" / resume.RESUME
        source.parent.mkdir()
        source.write_bytes(data)
    events, log = _run(dataclasses.replace(retry, resume_from=str(source), resume_trial=expected))
    assert "resumed" not in [e["event"] for e in events]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]
    assert reason in log and "training from epoch 0" in log, log
