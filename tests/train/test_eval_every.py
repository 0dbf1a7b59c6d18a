"""train.eval_every: validation part-way through an epoch, resumable exactly from there; and the
test split scored beside validation when a trial records curves (benchmarks/curves.py)."""

from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path

import pytest

from sweeper.data import datasets
from sweeper.spec.sweep_spec import parse_spec
from sweeper.spec.trial_config import resolve
from sweeper.testing import tiny_space
from sweeper.train.worker import run_trial


def _config(folder, tmp_path, **train):
    spec = parse_spec(tiny_space(folder, train={"epochs": 3, "batch_size": 8, "eval_every": 0.5,
                                                "augment": "flip_crop", **train}))
    cache = datasets.prepare(datasets.Source(str(folder), None, 0.2), 16, tmp_path / "cache")
    return resolve(spec, 0, {"lr": 0.05}, tmp_path / "trials", cache)


def _rows(config) -> list[dict]:
    return list(csv.DictReader(open(Path(config.trial_dir) / "metrics.csv")))


def test_half_epoch_validation_reports_and_logs_every_half_epoch(colour_folder, tmp_path):
    config = _config(colour_folder, tmp_path)
    events = []
    assert run_trial(config, lambda e: events.append(e) or True) == "complete"
    assert [float(r["epoch"]) for r in _rows(config)] == [0.5, 1, 1.5, 2, 2.5, 3]
    # part-way validations are their own events: the orchestrator's epochs stay whole
    assert [e["epoch"] for e in events if e["event"] == "eval"] == [0.5, 1.5, 2.5]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3]
    assert "Epoch 1.5: val acc" in (Path(config.trial_dir) / "log.txt").read_text()


class Killed(Exception):
    pass


def test_a_trial_killed_after_a_half_epoch_validation_resumes_there_exactly(colour_folder, tmp_path):
    whole = _config(colour_folder, tmp_path / "whole", augment="swin_randaug")
    assert run_trial(whole, lambda e: True) == "complete"

    part = _config(colour_folder, tmp_path / "part", augment="swin_randaug")

    def die_at_1_5(event):
        if event["event"] == "eval" and event["epoch"] == 1.5:
            raise Killed()  # as kill -9 would: after the state of epoch 1.5 was saved
        return True

    with pytest.raises(Killed):
        run_trial(part, die_at_1_5)
    resumed = dataclasses.replace(part, resume_from=str(Path(part.trial_dir) / "resume.pt"), resume_trial=0)
    events = []
    assert run_trial(resumed, lambda e: events.append(e) or True) == "complete"
    assert "Resumed after step" in (Path(part.trial_dir) / "log.txt").read_text()
    assert [e["epoch"] for e in events if e["event"] in ("eval", "epoch")] == [2, 2.5, 3]
    keys = ("epoch", "train_loss", "val_acc", "lr")
    assert [{k: r[k] for k in keys} for r in _rows(resumed)] == [{k: r[k] for k in keys} for r in _rows(whole)]


def test_recorded_curves_score_the_test_split_at_every_validation(colour_folder, tmp_path):
    data = tmp_path / "with_test"
    shutil.copytree(colour_folder, data)
    shutil.copytree(colour_folder / "val", data / "test")
    spec = parse_spec(tiny_space(data, train={"epochs": 1, "batch_size": 8, "eval_every": 0.5}))
    assert spec.data.test is None  # root/test/ is found by the listing itself
    cache = datasets.prepare(datasets.Source(str(data), None, 0.2), 16, tmp_path / "cache")
    config = dataclasses.replace(resolve(spec, 0, {"lr": 0.05}, tmp_path / "trials", cache), record_test=True)
    assert run_trial(config, lambda e: True) == "complete"
    rows = _rows(config)
    assert [float(r["epoch"]) for r in rows] == [0.5, 1]
    # the test folder holds the val images: the same model scores them the same
    assert all(r["test_acc"] == r["val_acc"] and r["test_top5"] == r["val_top5"] for r in rows)
    # a sweep's trial does not look at the test split
    plain = resolve(spec, 1, {"lr": 0.05}, tmp_path / "trials", cache)
    assert run_trial(plain, lambda e: True) == "complete"
    assert "test_acc" not in _rows(plain)[0]


def test_at_a_part_epoch_rung_the_worker_waits_stops_when_told_and_resumes_there_exactly(colour_folder, tmp_path):
    whole = _config(colour_folder, tmp_path / "whole", eval_every=1.0, augment="swin_randaug")
    assert run_trial(whole, lambda e: True) == "complete"

    part = dataclasses.replace(_config(colour_folder, tmp_path / "part", eval_every=1.0, augment="swin_randaug"),
                               decide_at=(0.5,))
    asked = []

    def pause_at_rung(event):
        if event.get("decide"):
            asked.append(event["epoch"])
            return False  # the orchestrator says stop: the trial pauses at rung 0.5
        return True

    assert run_trial(part, pause_at_rung) == "stopped"
    assert asked == [0.5] and [float(r["epoch"]) for r in _rows(part)] == [0.5]
    assert "Stopped by the orchestrator at epoch 0.5" in (Path(part.trial_dir) / "log.txt").read_text()
    resumed = dataclasses.replace(part, resume_from=str(Path(part.trial_dir) / "resume.pt"), resume_trial=0)
    events = []
    assert run_trial(resumed, lambda e: events.append(e) or True) == "complete"
    assert [e["epoch"] for e in events if e["event"] in ("eval", "epoch")] == [1, 2, 3]  # not asked again
    keys = ("epoch", "train_loss", "val_acc", "lr")
    assert [{k: r[k] for k in keys} for r in _rows(resumed) if r["epoch"] != "0.5"] == \
        [{k: r[k] for k in keys} for r in _rows(whole)]


def test_an_epoch_of_one_step_is_judged_after_it_and_resumes_from_its_end(colour_folder, tmp_path):
    """A large batch on little data: the half-epoch rung sits after the only step (it cannot be
    skipped, or the trial would pass the rung unjudged); resuming there validates epoch 1."""
    part = dataclasses.replace(_config(colour_folder, tmp_path, eval_every=1.0, batch_size=256), decide_at=(0.5,))
    asked = []
    assert run_trial(part, lambda e: not (e.get("decide") and not asked.append(e["epoch"]))) == "stopped"
    assert asked == [0.5]
    resumed = dataclasses.replace(part, resume_from=str(Path(part.trial_dir) / "resume.pt"), resume_trial=0)
    events = []
    assert run_trial(resumed, lambda e: events.append(e) or True) == "complete"
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3]
