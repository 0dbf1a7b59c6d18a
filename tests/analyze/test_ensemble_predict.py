"""`ensemble` and `predict` on studies that really trained: the numbers are recomputed here by
hand, with timm and torchvision directly, from the checkpoints and the decoded validation set."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import optuna
import pytest
import timm
import torch
from PIL import Image
from torchvision import transforms
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.data import datasets
from sweeper.testing import huge_png, tiny_space, write_space

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _study(tmp_path_factory, colour_folder, name: str, lrs: list[float], keep: int = 3) -> Path:
    cwd = tmp_path_factory.mktemp(name)
    space = write_space(cwd / "space.yaml", tiny_space(
        colour_folder, study=name, space={"lr": lrs}, enqueue=[{"lr": lr} for lr in dict.fromkeys(lrs)],
        search={"n_trials": 2, "sampler": {"name": "random", "seed": 0}, "pruner": "none"}))
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = cli("run", "--space", space, "--keep-checkpoints", keep)
        assert result.exit_code == 0, result.output
    finally:
        os.chdir(old)
    return cwd


@pytest.fixture(scope="module")
def twins(tmp_path_factory, colour_folder):
    """Two trials of one configuration and one seed: identical weights (CPU training is deterministic)."""
    return _study(tmp_path_factory, colour_folder, "twins", [0.05])


@pytest.fixture(scope="module")
def pair(tmp_path_factory, colour_folder):
    return _study(tmp_path_factory, colour_folder, "pair", [0.05, 0.003])


@pytest.fixture
def at(request):
    old = os.getcwd()
    yield lambda folder: os.chdir(folder)
    os.chdir(old)


def _trials(name):
    return optuna.load_study(study_name=name, storage="sqlite:///studies.db").get_trials()


def _by_hand(trial) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities of a trial's checkpoint on the study's validation images, and the labels."""
    folder = Path(trial.user_attrs["trial_dir"])
    config = json.loads((folder / "config.json").read_text())
    state = torch.load(folder / "checkpoint.pth", weights_only=True)
    net = timm.create_model(config["model"], num_classes=len(state["classes"]))
    net.load_state_dict(state["state_dict"])
    net.eval()
    size = config["image_size"]
    to_input = transforms.Compose([transforms.Resize(int(size / 0.875)), transforms.CenterCrop(size),
                                   transforms.ToTensor(), transforms.Normalize(config["mean"], config["std"])])
    val = datasets.load(config["data_cache"]).val  # the decoded images every trial saw
    x = torch.stack([to_input(Image.fromarray(val.images[i])) for i in range(len(val.images))])
    with torch.no_grad():
        return net(x).softmax(dim=1), torch.from_numpy(val.labels)


def _accuracies(predicted, labels) -> tuple[float, float]:
    hits = (predicted == labels).float()
    per_class = [hits[labels == c].mean().item() for c in labels.unique()]
    return hits.mean().item(), sum(per_class) / len(per_class)


@pytest.mark.slow
def test_an_ensemble_of_two_identical_checkpoints_is_the_single_model(twins, at):
    at(twins)
    t0, t1 = _trials("twins")
    s0 = torch.load(Path(t0.user_attrs["trial_dir"]) / "checkpoint.pth", weights_only=True)["state_dict"]
    s1 = torch.load(Path(t1.user_attrs["trial_dir"]) / "checkpoint.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(s0[k], s1[k]) for k in s0)  # the premise: identical weights
    for method in ("mean", "vote"):
        result = cli("ensemble", "--study", "twins", "--top", 2, "--method", method, "--json")
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        single = out["members"][0]
        assert out["ensemble"] == {"accuracy": single["accuracy"],
                                   "balanced_accuracy": single["balanced_accuracy"]}
        # a member scores what its trial reported: same checkpoint epoch, same preprocessing
        assert single["accuracy"] == pytest.approx(t0.value)
    table = cli("ensemble", "--study", "twins", "--top", 2).output
    assert "ensemble (mean)" in table and "+0.0000 over the best single model" in table


@pytest.mark.slow
def test_an_ensemble_of_two_different_checkpoints_matches_the_hand_computation(pair, at):
    at(pair)
    trials = sorted(_trials("pair"), key=lambda t: -t.value)
    (p0, labels), (p1, _) = _by_hand(trials[0]), _by_hand(trials[1])
    assert not torch.equal(p0.argmax(1), p1.argmax(1)) or not torch.allclose(p0, p1)
    mean = (p0 + p1) / 2
    by_mean = mean.argmax(1)
    # vote: two members; where they disagree each label has one vote, and the higher mean wins
    a, b = p0.argmax(1), p1.argmax(1)
    rows = torch.arange(len(a))
    by_vote = torch.where(a == b, a, torch.where(mean[rows, a] >= mean[rows, b], a, b))
    for method, predicted in (("mean", by_mean), ("vote", by_vote)):
        out = json.loads(cli("ensemble", "--study", "pair", "--top", 2, "--method", method, "--json").output)
        accuracy, balanced = _accuracies(predicted, labels)
        assert out["ensemble"]["accuracy"] == pytest.approx(accuracy, abs=1e-6)
        assert out["ensemble"]["balanced_accuracy"] == pytest.approx(balanced, abs=1e-6)
        assert [m["trial"] for m in out["members"]] == [trials[0].number, trials[1].number]
        assert out["members"][1]["accuracy"] == pytest.approx(_accuracies(b, labels)[0], abs=1e-6)
    saved = json.loads((pair / "trials" / "pair" / "ensemble.json").read_text())
    assert saved["method"] == "vote" and len(saved["checkpoints"]) == 2


def test_predict_writes_one_row_per_image_in_a_stable_order(twins, at, colour_folder, tmp_path, monkeypatch):
    at(twins)
    images = tmp_path / "unlabelled"
    shutil.copytree(colour_folder / "val", images / "nested")
    (images / "broken.jpg").write_bytes(b"not an image")
    huge_png(images / "huge.png")
    first = cli("predict", "--study", "twins", "--images", images, "--out", tmp_path / "a.csv")
    assert first.exit_code == 0, first.output
    assert "unreadable, skipped: broken.jpg" in first.output
    assert "skipped: huge.png (image" in first.output and "above the cap of 64,000,000" in first.output
    second = cli("predict", "--study", "twins", "--images", images, "--out", tmp_path / "b.csv")
    assert second.exit_code == 0, second.output
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    whole = cli("predict", "--study", "twins", "--images", images, "--out", tmp_path / "whole.csv",
                "--top", 2, "--tta", "flip")
    monkeypatch.setattr("sweeper.analyze.predict.CHUNK", 5)  # decoded and scored 5 images at a time
    chunked = cli("predict", "--study", "twins", "--images", images, "--out", tmp_path / "chunked.csv",
                  "--top", 2, "--tta", "flip")
    monkeypatch.undo()
    assert chunked.exit_code == 0 and whole.exit_code == 0, chunked.output + whole.output
    a, b = (list(csv.DictReader(open(tmp_path / f))) for f in ("chunked.csv", "whole.csv"))
    assert [(r["file"], r["class"]) for r in a] == [(r["file"], r["class"]) for r in b]
    # the same numbers, up to float rounding in batches of another size
    assert [float(r["probability"]) for r in a] == pytest.approx([float(r["probability"]) for r in b], abs=1e-5)
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    files = sorted(p.relative_to(images).as_posix() for p in (images / "nested").rglob("*.*"))
    assert [r["file"] for r in rows] == files
    assert all(len(r["top5"].split(";")) == 3 and r["class"] == r["top5"].split(";")[0] for r in rows)
    # the val folder labelled as validation saw it: the same accuracy as the best trial
    correct = sum(r["class"] == r["file"].split("/")[1] for r in rows)
    best = max(t.value for t in _trials("twins"))
    assert correct / len(rows) == pytest.approx(best)
    flip = cli("predict", "--study", "twins", "--images", images, "--out", tmp_path / "c.csv",
               "--top", 2, "--tta", "flip", "--json")
    assert json.loads(flip.output)["rows"] == len(files)


@pytest.mark.slow
def test_a_missing_checkpoint_says_which_trial_and_how_to_get_one(tmp_path_factory, colour_folder, at):
    folder = _study(tmp_path_factory, colour_folder, "kept1", [0.05, 0.003], keep=1)
    at(folder)
    result = cli("ensemble", "--study", "kept1", "--top", 2)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "has no checkpoint.pth" in result.output and "--keep-checkpoints" in result.output
    assert "sweeper recheck --study kept1" in result.output
