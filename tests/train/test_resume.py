"""Every epoch is resumable: a trial lost to a fault outside itself trains on from its last
finished epoch, with exactly the metrics it would have had; one that failed for its own
reasons is not resumed."""

from __future__ import annotations

import csv
import os
import signal

import pytest
import torch
from optuna.trial import TrialState
from processes import alive, finish, start, trials, wait_for

from sweeper.testing import tiny_space, write_space

METRICS = ["epoch", "train_loss", "val_acc", "val_balanced_acc", "val_top5", "lr"]


def _space(folder, data, study):
    # mixing draws from numpy, drop path from torch, and the EMA is state of its own: all resume
    doc = tiny_space(data, study=study, model={"drop_path_rate": 0.1},
                     train={"epochs": 4, "batch_size": 8, "schedule": "step", "milestones": [3],
                            "augment": "swin_randaug", "precision": "auto", "ema": {"decay": 0.7},
                            "batch_augment": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}},
                     search={"n_trials": 1, "sampler": {"name": "random", "seed": 0}, "pruner": "none"})
    # 32 px: at 16 px the last stage's bf16 weight gradient comes out NaN on AMX CPUs (oneDNN)
    doc["data"].update(num_workers=0, image_size=32)
    return str(write_space(folder / "space.yaml", doc))


def _metrics(folder, study, number) -> list[dict]:
    with open(folder / "trials" / study / str(number) / "metrics.csv") as f:
        return [{k: row[k] for k in METRICS} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_a_trial_resumed_after_kill_9_of_its_orchestrator_ends_with_the_uninterrupted_metrics(colour_folder, tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    reference.mkdir()
    interrupted.mkdir()
    code, out = finish(start(reference, "--space", _space(reference, colour_folder, "resume")))
    assert code == 0, out

    spec = _space(interrupted, colour_folder, "resume")
    proc = start(interrupted, "--space", spec, "--heartbeat", "0.5", env={"SWEEPER_INJECT_FAULT": "slow:0"})
    victim = wait_for(lambda: [t for t in trials(interrupted, "resume")
                               if t.state == TrialState.RUNNING and len(t.intermediate_values) >= 2],
                      what="epoch 2 reported")[0]
    os.kill(proc.pid, signal.SIGKILL)  # the worker waits 2 s before epoch 3: this lands there
    proc.wait()
    wait_for(lambda: not alive(victim.user_attrs["worker_pid"]), timeout=20, what="the worker to die")
    lost_dir = interrupted / "trials" / "resume" / "0"
    assert (lost_dir / "resume.pt").is_file()

    code, out = finish(start(interrupted, "--space", spec, "--heartbeat", "0.5"))
    assert code == 0, out
    lost, retry = trials(interrupted, "resume")
    assert lost.state == TrialState.FAIL and lost.user_attrs["reason"] == "orchestrator lost"
    assert retry.user_attrs["retry_of"] == 0 and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_after_epoch"] == 2
    assert "Resumed after epoch 2" in (interrupted / "trials" / "resume" / "1" / "log.txt").read_text()

    (whole,) = trials(reference, "resume")
    assert _metrics(interrupted, "resume", 1) == _metrics(reference, "resume", 0)
    assert retry.intermediate_values == whole.intermediate_values  # epochs 1-2 carried over
    assert retry.value == whole.value
    saved = [torch.load(d / "checkpoint.pth", weights_only=True)["state_dict"]
             for d in (reference / "trials" / "resume" / "0", interrupted / "trials" / "resume" / "1")]
    assert saved[0].keys() == saved[1].keys()
    differ = [k for k in saved[0] if not torch.equal(saved[0][k], saved[1][k])]
    assert not differ, differ[:5]  # the same EMA weights
    # the resume state goes once the trial has ended for good
    assert not (lost_dir / "resume.pt").exists()
    assert not (interrupted / "trials" / "resume" / "1" / "resume.pt").exists()


@pytest.mark.slow
def test_a_trial_that_failed_for_its_own_reasons_is_not_resumed(colour_folder, tmp_path):
    spec = _space(tmp_path, colour_folder, "own")
    # epoch 1 finishes, then the worker is silent for 2 s: past --trial-timeout, it is killed
    code, out = finish(start(tmp_path, "--space", spec, "--trial-timeout", "1.5",
                             env={"SWEEPER_INJECT_FAULT": "slow:0"}))
    assert code == 0, out
    final = trials(tmp_path, "own")
    assert len(final) == 1  # no retry
    assert final[0].state == TrialState.FAIL and final[0].user_attrs["reason"].startswith("timeout")
    assert not (tmp_path / "trials" / "own" / "0" / "resume.pt").exists()
