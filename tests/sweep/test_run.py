"""`sweeper run` end to end: real SQLite store, real worker processes, tiny real models."""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.testing import make_image_folder, tiny_space, write_space

runner = CliRunner()


def sweep(args: list[str]):
    return runner.invoke(app, ["run", *args])


def trials_of(study: str, db: Path):
    s = optuna.load_study(study_name=study, storage=f"sqlite:///{db}")
    return sorted(s.get_trials(), key=lambda t: t.number)


@pytest.fixture(scope="module")
def pruning_sweep(colour_folder, tmp_path_factory):
    """Two good enqueued trials, then a hopeless one the median pruner must stop after epoch 1;
    then a second `run` that raises n_trials adds to the same study."""
    cwd = tmp_path_factory.mktemp("pruning")
    space = write_space(cwd / "space.yaml", tiny_space(
        colour_folder,
        study="prune",
        train={"epochs": 3, "batch_size": 8},
        search={"n_trials": 3, "sampler": {"name": "random", "seed": 0},
                "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0}},
        space={"lr": {"low": 1.0e-6, "high": 0.1, "log": True}},
        enqueue=[{"lr": 0.05}, {"lr": 0.04}, {"lr": 1.0e-6}],
    ))
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        first = sweep(["--space", str(space)])
        first_trials = trials_of("prune", cwd / "studies.db")
        second = sweep(["--space", str(space), "--n-trials", "5"])
    finally:
        os.chdir(old)
    return cwd, first, first_trials, second


@pytest.mark.slow
def test_enqueued_configurations_run_first_in_order(pruning_sweep):
    cwd, first, trials, _ = pruning_sweep
    assert first.exit_code == 0, first.output
    assert [t.params["lr"] for t in trials] == [0.05, 0.04, 1.0e-6]


def test_hopeless_trial_is_pruned_after_one_epoch(pruning_sweep):
    cwd, first, trials, _ = pruning_sweep
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    bad = trials[2]
    assert list(bad.intermediate_values) == [1]
    assert bad.user_attrs["epochs_run"] == 1
    assert "pruned after epoch 1" in bad.user_attrs["reason"]
    assert "trial=2 event=finish state=PRUNED epochs=1" in first.output
    metrics = (cwd / "trials" / "prune" / "2" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 2  # header + the one epoch it ran


def test_completed_trials_leave_their_folder_and_store_rows(pruning_sweep):
    cwd, _, trials, _ = pruning_sweep
    good = trials[0]
    assert list(good.intermediate_values) == [1, 2, 3]
    assert good.value == good.intermediate_values[3]
    study = optuna.load_study(study_name="prune", storage=f"sqlite:///{cwd / 'studies.db'}")
    assert study.user_attrs["classes"] == ["class_0", "class_1", "class_2"]  # once, for every trial
    assert "classes" not in good.user_attrs
    folder = cwd / "trials" / "prune" / "0"
    assert {"config.json", "log.txt", "metrics.csv", "classes.txt"} <= {p.name for p in folder.iterdir()}
    assert '"lr": 0.05' in (folder / "config.json").read_text()


def test_a_study_keeps_one_class_list_and_refuses_another_dataset(pruning_sweep, tmp_path, monkeypatch):
    cwd, _, _, _ = pruning_sweep
    db = cwd / "studies.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    other = make_image_folder(tmp_path / "other", classes=2, per_class=6)
    monkeypatch.chdir(cwd)
    result = sweep(["--space", str(cwd / "space.yaml"), "--data", str(other), "--n-trials", "9"])
    assert result.exit_code == 2 and result.output.count("Error:") == 1
    assert ("study 'prune' was trained on 3 classes (['class_0', 'class_1', 'class_2']); this dataset "
            "has 2 (['class_0', 'class_1'])") in result.output
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # the store untouched


def test_older_studies_keep_their_trials_class_lists():
    from sweeper import store

    older = optuna.trial.create_trial(value=0.5, user_attrs={"classes": ["a", "b"]})
    assert store.classes_of(older, {}) == ["a", "b"]
    assert store.classes_of(optuna.trial.create_trial(value=0.5), {"classes": ["a", "b"]}) == ["a", "b"]


def test_second_run_adds_to_the_same_study_without_rerunning_enqueued(pruning_sweep):
    cwd, _, _, second = pruning_sweep
    assert second.exit_code == 0, second.output
    trials = trials_of("prune", cwd / "studies.db")
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    lrs = [t.params["lr"] for t in trials]
    assert lrs.count(0.05) == 1 and lrs.count(0.04) == 1 and lrs.count(1.0e-6) == 1
    assert "study prune: 5 trials" in second.output


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(colour_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path / "space.yaml", tiny_space(
        colour_folder, study="fails",
        search={"n_trials": 2, "sampler": "random", "pruner": "none"},
        space={"frozen_stages": [9, -1]},  # test_resnet has 4 stages: 9 cannot work
        enqueue=[{"frozen_stages": 9}, {"frozen_stages": -1}],
    ))
    result = sweep(["--space", str(space)])
    assert result.exit_code == 0, result.output
    failed, ok = trials_of("fails", tmp_path / "studies.db")
    assert failed.state == TrialState.FAIL
    assert "frozen_stages=9, but this model has 4 stages" in failed.user_attrs["reason"]
    assert ok.state == TrialState.COMPLETE
    assert "1 complete, 0 pruned, 1 failed" in result.output


def test_dry_run_validates_samples_and_writes_nothing(colour_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path / "space.yaml", tiny_space(colour_folder, enqueue=[{"lr": 0.02}]))
    result = sweep(["--space", str(space), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "lr: float [0.01, 0.1] log" in result.output
    assert '0: {"lr": 0.02}' in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]


def test_dry_run_of_the_shipped_caltech_space_names_its_strategy(colour_folder):
    shipped = Path(__file__).resolve().parents[2] / "search_spaces" / "resnet.yaml"
    result = sweep(["--space", str(shipped), "--data", str(colour_folder), "--dry-run"])
    assert result.exit_code == 0, result.output
    # the 1-epoch baseline: the replays' leader (screening from half an epoch) lost the live check (README)
    assert "sampler=random{'seed': 0} pruner=asha{'min_resource': 1, 'reduction_factor': 3, 'max_resource': 2}" \
        in result.output
    assert "budget=300 epochs" in result.output
    assert "enqueued first" not in result.output  # queued first, the hand-tuned runs cost 4.9 points (replay)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("doc_change, args, message", [
    ({"space": {"lr": {"low": 0.5, "high": 0.1}}}, [], "space.lr.low: must be <= high"),
    ({"model": {"name": "resnet51"}}, [], "model.name: unknown timm model 'resnet51'"),
    ({}, ["--data", "does/not/exist"], "does/not/exist not found; pass --data"),
    ({}, ["--gpus", "a,b"], "--gpus"),
    ({}, ["--budget-epochs", "1"], "search.budget.epochs: 1 is less than one trial's 2 epochs"),
])
def test_bad_input_exits_2_with_one_message_and_leaves_the_store(
        colour_folder, tmp_path, monkeypatch, doc_change, args, message):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "studies.db"
    optuna.create_study(study_name="other", storage=f"sqlite:///{db}")
    before = _digest(db)
    space = write_space(tmp_path / "space.yaml", tiny_space(colour_folder, **doc_change))
    result = sweep(["--space", str(space), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert _digest(db) == before
    assert not (tmp_path / "trials").exists()


def test_python_dash_m_sweeper_runs():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "sweeper", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "run" in out.stdout


def test_unreachable_hub_weights_stop_the_run_before_the_store(colour_folder, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network, fast
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path / "space.yaml", tiny_space(
        colour_folder, model={"name": "test_resnet", "pretrained": True}))
    result = sweep(["--space", str(space)])
    assert result.exit_code == 2, result.output
    assert "model.pretrained: could not fetch timm hub weights for test_resnet" in result.output
    assert not (tmp_path / "studies.db").exists()


@pytest.mark.slow
def test_workers_run_side_by_side_on_the_cpu_when_told(colour_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path / "space.yaml", tiny_space(colour_folder, study="pair"))
    result = sweep(["--space", str(space), "--workers", "2", "--gpus", "none", "--n-trials", "2"])
    assert result.exit_code == 0, result.output
    trials = trials_of("pair", tmp_path / "studies.db")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert sorted(t.user_attrs["slot"] for t in trials) == [0, 1]
    assert [(t.user_attrs["cuda_visible_devices"], t.user_attrs["device"]) for t in trials] == [("", "cpu")] * 2
    assert "workers=2 (CPU, CPU)" in result.output


@pytest.mark.slow
def test_timeout_stops_new_trials_and_the_objective_is_what_is_reported(tmp_path, monkeypatch):
    import csv

    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path / "space.yaml", tiny_space(  # digits: 10 classes, top-5 != top-1
        study="top5", search={"n_trials": 5, "sampler": "random", "pruner": "none",
                              "objective": "val_top5"}))
    result = sweep(["--space", str(space), "--timeout", "1"])
    assert result.exit_code == 0, result.output
    (only,) = trials_of("top5", tmp_path / "studies.db")  # the deadline passed during trial 0
    rows = list(csv.DictReader(open(tmp_path / "trials" / "top5" / "0" / "metrics.csv")))
    assert [only.intermediate_values[int(r["epoch"])] for r in rows] == \
        [float(r["val_top5"]) for r in rows]
    assert [float(r["val_top5"]) for r in rows] != [float(r["val_acc"]) for r in rows]
    assert "val_top5" in result.output


def test_queued_configurations_left_unstarted_are_named_in_the_summary(colour_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path / "space.yaml", tiny_space(
        colour_folder, study="left", train={"epochs": 1, "batch_size": 8},
        search={"n_trials": 1, "sampler": {"name": "random", "seed": 0}, "pruner": "none"},
        space={"lr": [0.05, 0.04, 0.03]}, enqueue=[{"lr": 0.05}, {"lr": 0.04}, {"lr": 0.03}]))
    result = sweep(["--space", str(space)])
    assert result.exit_code == 0, result.output
    assert [t.state for t in trials_of("left", tmp_path / "studies.db")] == \
        [TrialState.COMPLETE, TrialState.WAITING, TrialState.WAITING]
    assert "2 queued configuration(s) not started: the next `sweeper run` of this study starts with them" \
        in result.output
