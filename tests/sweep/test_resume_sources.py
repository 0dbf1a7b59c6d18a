"""Where a retry resumes from is read from the study (user attributes `trial_dir`,
`resumed_from`), which others can write: through `sweeper run`, a planted state is never
unpickled, nothing outside the study's trials folder is read or removed, and a state that is
not usable leaves the retry training from epoch 0 with the reason in its log."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from processes import finish, start, trials

from sweeper.testing import tiny_space, write_space
from sweeper.train import resume

STUDY = "sources"


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _space(cwd: Path, folder: Path, n_trials: int) -> str:
    doc = tiny_space(folder, study=STUDY, data={"image_size": 16, "num_workers": 0},
                     train={"epochs": 2, "batch_size": 8},
                     search={"n_trials": n_trials, "sampler": {"name": "random", "seed": 0}, "pruner": "none"})
    return str(write_space(cwd / "space.yaml", doc))


@pytest.fixture(scope="module")
def swept(colour_folder, tmp_path_factory):
    """A study of one finished trial (copied by each test)."""
    cwd = tmp_path_factory.mktemp("swept")
    code, out = finish(start(cwd, "--space", _space(cwd, colour_folder, 1)))
    assert code == 0, out
    return cwd


def _lost_trial(cwd: Path, attrs: dict) -> None:
    """A trial lost with its orchestrator (FAIL, queued again) whose attributes say `attrs`."""
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{cwd}/studies.db")
    done = study.trials[0]
    lost = optuna.trial.create_trial(state=TrialState.FAIL, params=done.params, distributions=done.distributions,
                                     user_attrs={"reason": "orchestrator lost", "requeued": True, **attrs})
    study.add_trial(lost)
    study.enqueue_trial(done.params, user_attrs={"retries": 1, "retry_of": study.trials[-1].number})


def _planted(path: Path, marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": Payload(marker)}, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("attr", ["trial_dir", "resumed_from"])
def test_a_resume_source_outside_the_trials_folder_is_neither_read_nor_removed(
        attr, swept, colour_folder, tmp_path):
    cwd = tmp_path / "cwd"
    shutil.copytree(swept, cwd)
    marker, outside = tmp_path / "MARKER", tmp_path / "elsewhere" / resume.RESUME
    planted = _planted(outside, marker)
    _lost_trial(cwd, {"trial_dir": str(outside.parent)} if attr == "trial_dir" else
                {"trial_dir": str(cwd / "trials" / STUDY / "1"), "resumed_from": str(outside)})
    code, out = finish(start(cwd, "--space", _space(cwd, colour_folder, 2)))
    assert code == 0, out
    retry = trials(cwd, STUDY)[-1]
    assert retry.state == TrialState.COMPLETE and "resumed_from" not in retry.user_attrs
    assert sorted(retry.intermediate_values) == [1, 2]  # trained from epoch 0
    assert not marker.exists()
    assert outside.read_bytes() == planted  # not removed when the retry ended


@pytest.mark.slow
@pytest.mark.parametrize("state, reason", [("pickle", "older sweeper"), ("truncated", "truncated or corrupt")])
def test_a_planted_or_truncated_state_in_the_trials_folder_is_not_used(state, reason, swept, colour_folder, tmp_path):
    cwd = tmp_path / "cwd"
    shutil.copytree(swept, cwd)
    marker, source = tmp_path / "MARKER", cwd / "trials" / STUDY / "1" / resume.RESUME
    if state == "pickle":
        _planted(source, marker)
    else:
        source.parent.mkdir(parents=True)
        source.write_bytes(resume.MAGIC + b'{"bytes": 4000, "sha256": "00"}\n' + b"\0" * 100)
    _lost_trial(cwd, {"trial_dir": str(source.parent)})
    code, out = finish(start(cwd, "--space", _space(cwd, colour_folder, 2)))
    assert code == 0, out
    retry = trials(cwd, STUDY)[-1]
    # the retry ran (it did not fail for good), from epoch 0, saying why in its log
    assert retry.state == TrialState.COMPLETE and sorted(retry.intermediate_values) == [1, 2]
    assert retry.user_attrs["resumed_from"] == str(source)
    log = (cwd / "trials" / STUDY / str(retry.number) / "log.txt").read_text()
    assert f"Not resumed from {source}: " in log and reason in log and "training from epoch 0" in log, log
    assert not marker.exists()
    assert not source.exists()  # inside the trials folder: dropped once the trial ended
