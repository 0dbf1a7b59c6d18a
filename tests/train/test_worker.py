"""The epoch loop, run in-process on real tiny images with a real tiny timm model."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

from sweeper.data import datasets
from sweeper.spec.sweep_spec import parse_spec
from sweeper.spec.trial_config import resolve
from sweeper.testing import tiny_space
from sweeper.train.worker import run_trial


def _config(folder, tmp_path, **train):
    spec = parse_spec(tiny_space(folder, train={"epochs": 3, "batch_size": 8, **train}))
    cache = datasets.prepare(datasets.Source(str(folder), None, 0.2), 16, tmp_path / "cache")
    return resolve(spec, 0, {"lr": 0.05}, tmp_path / "trials", cache)


def test_trial_reports_every_epoch_and_writes_its_folder(colour_folder, tmp_path):
    config = _config(colour_folder, tmp_path)
    events = []
    assert run_trial(config, lambda e: events.append(e) or True) == "complete"
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert set(epochs[0]) >= {"train_loss", "val_acc", "val_balanced_acc", "val_top5", "lr",
                              "seconds", "images_per_s"}
    assert epochs[-1]["val_acc"] > 0.6  # three colours are easy
    out = Path(config.trial_dir)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    log = (out / "log.txt").read_text()
    assert "Epoch:[  1/  3], step:[" in log and "val acc" in log
    assert (out / "classes.txt").read_text().split() == ["class_0", "class_1", "class_2"]


def test_trial_stops_when_told(colour_folder, tmp_path):
    config = _config(colour_folder, tmp_path)
    assert run_trial(config, lambda e: e["event"] != "epoch") == "stopped"
    rows = list(csv.DictReader(open(Path(config.trial_dir) / "metrics.csv")))
    assert len(rows) == 1
    assert "Stopped by the orchestrator after epoch 1" in (Path(config.trial_dir) / "log.txt").read_text()


def test_non_finite_loss_stops_the_trial(colour_folder, tmp_path):
    config = dataclasses.replace(_config(colour_folder, tmp_path), lr=1.0e12)
    events = []
    assert run_trial(config, lambda e: events.append(e) or True) == "stopped"
    assert events[-1]["event"] == "nonfinite"


@pytest.mark.parametrize("changes", [{"optimizer": "adamw", "lr": 0.003},
                                     {"optimizer": "sgd", "nesterov": True},
                                     {"augment": "swin_randaug", "augment_ops": ["Rotate", "Shear"]}])
def test_optimizers_and_augmentation_train(colour_folder, tmp_path, changes):
    config = dataclasses.replace(_config(colour_folder, tmp_path), **changes)
    events = []
    assert run_trial(config, lambda e: events.append(e) or True) == "complete"
    epochs = [e for e in events if e["event"] == "epoch"]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]


def test_tied_logits_predict_the_lowest_class_as_ensemble_and_predict_do():
    import torch
    from torch import nn

    from sweeper.data.augment import Normalize
    from sweeper.train.device import Amp
    from sweeper.train.evaluation import evaluate

    class Tied(nn.Module):  # every class equally likely: what bf16 logits often look like, in part
        def forward(self, x):
            return torch.zeros(len(x), 4, dtype=x.dtype)

    labels = torch.tensor([0, 1, 2, 3, 0, 3, 3, 0])
    loader = [(torch.zeros(len(labels), 3, 2, 2, dtype=torch.uint8), labels)]
    metrics = evaluate(Tied(), loader, Normalize((0.5,) * 3, (0.5,) * 3, torch.device("cpu")),
                       Amp("fp32", torch.device("cpu")), 4)
    assert metrics["val_acc"] == (labels == 0).float().mean().item() == 3 / 8
    assert torch.zeros(8, 4).softmax(1).argmax(1).eq(0).all()  # the rule ensemble.combine uses
