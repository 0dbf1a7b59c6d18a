"""A held-out test split: the configuration a sweep returns is scored on it once, at the end, and
`run`, `best`, `trials`, `show` and the report say so beside its val value."""

from __future__ import annotations

import json
import os
import shutil

import optuna
import pytest
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.testing import make_image_folder, tiny_space, write_space

runner = CliRunner()


@pytest.fixture(scope="module")
def tested(colour_folder, tmp_path_factory):
    """A sweep on data whose test/ folder holds copies of the val images: the chosen trial's test
    accuracy must then be exactly its last epoch's val_acc (the same images, the same pipeline)."""
    cwd = tmp_path_factory.mktemp("tested")
    data = cwd / "data"
    shutil.copytree(colour_folder, data)
    shutil.copytree(colour_folder / "val", data / "test")
    space = write_space(cwd / "space.yaml", tiny_space(data, study="tested", search={
        "n_trials": 2, "sampler": {"name": "random", "seed": 3}, "pruner": "none"}))
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = runner.invoke(app, ["run", "--space", str(space)])
        assert result.exit_code == 0, result.output
        yield cwd, result.output
    finally:
        os.chdir(old)


def _best_trial(cwd):
    study = optuna.load_study(study_name="tested", storage=f"sqlite:///{cwd}/studies.db")
    return study.best_trial


@pytest.mark.slow
def test_run_scores_the_chosen_configuration_once_on_the_test_split(tested):
    cwd, output = tested
    best = _best_trial(cwd)
    line = next(x for x in output.splitlines() if x.startswith("test accuracy of the chosen configuration"))
    assert f"(trial {best.number}): {best.value:.4f} on 30 test images" in line
    assert f"its val_acc {best.value:.4f} (gap +0.0000" in line
    # pruning and ranking never saw it: no trial reported a test value to the study
    assert all(set(t.intermediate_values) == {1, 2} for t in optuna.load_study(
        study_name="tested", storage=f"sqlite:///{cwd}/studies.db").trials)


@pytest.mark.slow
def test_best_trials_show_and_report_show_the_test_accuracy(tested):
    cwd, _ = tested
    best = _best_trial(cwd)
    info = json.loads(runner.invoke(app, ["best", "--study", "tested", "--json"]).output)
    assert info["test_score"]["trial"] == best.number
    assert info["test_score"]["test"] == pytest.approx(best.value)
    assert info["test_score"]["test_images"] == 30
    assert "test accuracy of the chosen configuration" in runner.invoke(app, ["best", "--study", "tested"]).output
    rows = json.loads(runner.invoke(app, ["trials", "--study", "tested", "--json"]).output)
    assert [r["test_acc"] is not None for r in rows] == [r["number"] == best.number for r in rows]
    shown = runner.invoke(app, ["show", "--study", "tested", "--trial", str(best.number)]).output
    assert f"test accuracy {best.value:.4f} on 30 test images" in shown
    other = 1 - best.number
    assert "test accuracy" not in runner.invoke(app, ["show", "--study", "tested", "--trial", str(other)]).output
    assert runner.invoke(app, ["report", "--study", "tested", "--no-errors"]).exit_code == 0
    html = (cwd / "trials" / "tested" / "report.html").read_text()
    assert "<th>Test accuracy</th>" in html and f"{best.value:.4f} on 30 test images" in html


@pytest.mark.slow
def test_after_a_recheck_each_run_of_the_chosen_configuration_is_scored(tested):
    """Runs after the other tests of the module: it adds a run to the study."""
    cwd, _ = tested
    first = _best_trial(cwd).number
    result = runner.invoke(app, ["recheck", "--study", "tested", "--top", "1", "--seeds", "1"])
    assert result.exit_code == 0, result.output
    assert "mean of 2 runs" in result.output
    score = json.loads(runner.invoke(app, ["best", "--study", "tested", "--json"]).output)["test_score"]
    assert score["trial"] == first and len(score["runs"]) == 2
    assert score["test"] == pytest.approx(sum(score["runs"].values()) / 2)


def test_data_inspect_shows_three_splits_and_files_shared_across_them(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=2, per_class=6)
    make_image_folder(root / "test", classes=2, per_class=3, split=False, seed=5)
    shutil.copy(root / "train" / "class_0" / "img_1.png", root / "test" / "class_0" / "leak.png")
    result = runner.invoke(app, ["data", "inspect", str(root), "--json", "--out", str(tmp_path / "i.html")])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["totals"] == {"train": 8, "val": 4, "test": 7}
    assert info["duplicates"]["across train and test"] == 1
    text = runner.invoke(app, ["data", "inspect", str(root), "--out", str(tmp_path / "i.html")]).output
    assert "8 train / 4 val / 7 test images" in text and "1 across train and test" in text


def test_test_fraction_splits_a_folder_of_classes_deterministically(tmp_path):
    from sweeper.data import datasets

    root = make_image_folder(tmp_path / "flat", classes=3, per_class=20, split=False)
    first = datasets.list_folder(root, 0.2, test_fraction=0.25)
    again = datasets.list_folder(root, 0.2, test_fraction=0.25)
    assert (len(first.train), len(first.val), len(first.test)) == (33, 12, 15)
    assert first == again
    everything = [p for p, _ in first.train + first.val + list(first.test)]
    assert len(set(everything)) == 60
    # without a test split the train/val split is what it always was
    assert datasets.list_folder(root, 0.2).val == datasets.list_folder(root, 0.2, test_fraction=0.0).val
