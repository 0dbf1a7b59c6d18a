"""TensorBoard and MLflow beside the study: one real sweep (completed, pruned and failed trials),
read back with TensorBoard's event reader and MLflow's own client."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.testing import tiny_space, write_space

pytest.importorskip("tensorboard")
mlflow = pytest.importorskip("mlflow")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import metadata  # noqa: E402

from sweeper.sweep.tracking import PARENT_TAG, STATE_TAG, STUDY_TAG, TRIAL_TAG  # noqa: E402
from sweeper.train.tracking import SCALARS, EpochCurves  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """Four trials on digits: two complete, a hopeless one pruned after epoch 1, one failing as it
    writes its checkpoint (after both epochs); only the best checkpoint is kept."""
    cwd = tmp_path_factory.mktemp("tracked")
    space = write_space(cwd / "space.yaml", tiny_space(
        study="tracked",
        search={"n_trials": 4, "sampler": {"name": "random", "seed": 0},
                "pruner": {"name": "threshold", "lower": 0.3}},  # digits: 0.6 after an epoch, 0.1 at lr 1e-6
        space={"lr": {"low": 1.0e-6, "high": 0.1, "log": True}},
        enqueue=[{"lr": 0.05}, {"lr": 0.04}, {"lr": 1.0e-6}, {"lr": 0.03}],
        logging={"tensorboard": True, "mlflow": True},
    ))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow's default store, here
        mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        mp.setenv("SWEEPER_DEVICE", "cpu")
        mp.setenv("CUDA_VISIBLE_DEVICES", "")
        mp.setenv("SWEEPER_INJECT_FAULT", "disk_full:3")
        result = runner.invoke(app, ["run", "--space", str(space), "--keep-checkpoints", "1"])
        tracking_uri = mlflow.get_tracking_uri()
    study = optuna.load_study(study_name="tracked", storage=f"sqlite:///{cwd / 'studies.db'}")
    return cwd, result, sorted(study.get_trials(), key=lambda t: t.number), tracking_uri


def _accumulator(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return acc


@pytest.mark.slow
def test_the_sweep_has_every_kind_of_ending(tracked):
    cwd, result, trials, _ = tracked
    assert result.exit_code == 0, result.output
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED,
                                         TrialState.FAIL]
    assert "MLflow logging stopped" not in result.output


@pytest.mark.slow
def test_tensorboard_has_each_trials_scalars_by_epoch_and_its_hparams(tracked):
    cwd, _, trials, _ = tracked
    study_dir = cwd / "trials" / "tracked"
    for t in trials:
        acc = _accumulator(study_dir / str(t.number))
        epochs = t.user_attrs["epochs_run"]
        assert set(SCALARS.values()) <= set(acc.Tags()["scalars"])
        for tag in SCALARS.values():
            assert [e.step for e in acc.Scalars(tag)] == list(range(1, epochs + 1)), (t.number, tag)
        assert [e.value for e in acc.Scalars("val/acc")] == \
            pytest.approx([t.intermediate_values[e] for e in range(1, epochs + 1)])
        content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        assert start.hparams["lr"].number_value == pytest.approx(t.params["lr"])
        assert start.hparams["state"].string_value == t.state.name
        assert end.status == (2 if t.state == TrialState.FAIL else 1)  # STATUS_FAILURE, STATUS_SUCCESS
        if t.state == TrialState.FAIL:
            assert "value" not in acc.Tags()["scalars"]
        else:  # the told value; a pruned trial's last one
            final = t.value if t.state == TrialState.COMPLETE else t.intermediate_values[epochs]
            assert [(e.step, e.value) for e in acc.Scalars("value")] == [(epochs, pytest.approx(final))]
    assert trials[2].user_attrs["epochs_run"] == 1 and trials[3].user_attrs["epochs_run"] == 2


@pytest.mark.slow
def test_mlflow_has_one_nested_run_per_trial_with_epochs_state_and_kept_checkpoint(tracked, monkeypatch):
    cwd, _, trials, uri = tracked
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # for mlflow.search_runs, from this folder
    assert uri.startswith("sqlite:///") and uri.endswith("/mlflow.db") and str(cwd) in uri
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("sweeper")
    (parent,) = client.search_runs([experiment.experiment_id], f"tags.`{STUDY_TAG}` = 'tracked'")
    assert parent.info.status == "FINISHED"
    children = mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="list",
                                  filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    by_trial = {int(r.data.tags[TRIAL_TAG]): r for r in children}
    assert sorted(by_trial) == [t.number for t in trials]
    kept = [t.number for t in trials if (cwd / "trials" / "tracked" / str(t.number) / "checkpoint.pth").is_file()]
    assert len(kept) == 1
    for t in trials:
        r = by_trial[t.number]
        assert float(r.data.params["lr"]) == pytest.approx(t.params["lr"])
        assert r.data.tags[STATE_TAG] == t.state.name
        assert r.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[t.state.name]
        history = client.get_metric_history(r.info.run_id, "val_acc")
        assert sorted((m.step, m.value) for m in history) == \
            [(e, pytest.approx(v)) for e, v in sorted(t.intermediate_values.items())]
        assert {m.step for m in client.get_metric_history(r.info.run_id, "train_loss")} == \
            set(t.intermediate_values)
        if t.state == TrialState.COMPLETE:
            assert r.data.metrics["value"] == pytest.approx(t.value)
        assert ("checkpoint.pth" in [a.path for a in client.list_artifacts(r.info.run_id)]) == (t.number in kept)


def test_a_resumed_trial_writes_each_epoch_once(tmp_path):
    """A retry (a new folder) gets the earlier attempt's epochs; a promoted trial (its own folder,
    which has them) does not write them again."""
    def record(epoch):
        return {"epoch": epoch, "train_loss": 1.0 / epoch, "val_acc": 0.1 * epoch, "val_balanced_acc": 0.1,
                "val_top5": 0.5, "lr": 0.01, "seconds": 1.0, "images_per_s": 100.0}

    config = types.SimpleNamespace(logging=["tensorboard"], trial_dir=str(tmp_path))  # as read from JSON
    with open(tmp_path / "log.txt", "a") as log:
        with EpochCurves(config, [record(1)], log) as curves:  # a retry: epoch 1 carried over
            curves.epoch(record(2))
        with EpochCurves(config, [record(1), record(2)], log) as curves:  # promoted where it paused
            curves.epoch(record(3))
    assert [e.step for e in _accumulator(tmp_path).Scalars("val/acc")] == [1, 2, 3]
    assert "stopped" not in (tmp_path / "log.txt").read_text()


def test_a_writer_error_is_logged_and_training_goes_on(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the run folder should be: the writer cannot start
    config = types.SimpleNamespace(logging=("tensorboard",), trial_dir=str(blocked / "0"))
    with open(tmp_path / "log.txt", "a") as log, EpochCurves(config, [], log) as curves:
        curves.epoch({"epoch": 1})
    assert "TensorBoard logging stopped" in (tmp_path / "log.txt").read_text()


HIDE_MLFLOW = """
import sys
class _Hidden:
    def find_spec(self, name, path=None, target=None):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError("No module named 'mlflow' (hidden by the test)")
sys.meta_path.insert(0, _Hidden())
"""


@pytest.mark.parametrize("where, args, message", [
    ("file", [], "space.yaml: logging.mlflow: mlflow logging needs a package"),
    ("option", ["--log", "tensorboard,mlflow"], "Error: --log: mlflow logging needs a package"),
])
def test_a_tracker_that_is_not_installed_is_one_error_before_anything(tmp_path, where, args, message):
    (tmp_path / "shim").mkdir()
    (tmp_path / "shim" / "sitecustomize.py").write_text(HIDE_MLFLOW)
    space = write_space(tmp_path / "space.yaml", tiny_space(
        logging={"mlflow": True} if where == "file" else None))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "shim"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "sweeper", "run", "--space", str(space), *args],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "pip install 'sweeper[mlflow]'" in out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("Error:") == 1
    assert not (tmp_path / "studies.db").exists() and not (tmp_path / "trials").exists()


@pytest.mark.parametrize("logging, message", [
    ({"tensorbord": True}, "logging.tensorbord: unknown key; did you mean 'tensorboard'?"),
    ({"mlflow": "yes"}, "logging.mlflow: must be true or false, got 'yes'"),
])
def test_bad_logging_sections_name_the_key(tmp_path, monkeypatch, logging, message):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path / "space.yaml", tiny_space(logging=logging))
    result = runner.invoke(app, ["run", "--space", str(space)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "studies.db").exists()


def test_an_unknown_log_option_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path / "space.yaml", tiny_space())
    result = runner.invoke(app, ["run", "--space", str(space), "--log", "wandb"])
    assert result.exit_code == 2 and "--log: unknown 'wandb'; valid: tensorboard, mlflow" in result.output
    assert not (tmp_path / "studies.db").exists()
