"""`studies`, `trials`, `show`, `best --export` and `report` on a study that really ran."""

from __future__ import annotations

import json
import os

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.testing import tiny_space, write_space

runner = CliRunner()


@pytest.fixture(scope="module")
def ran(colour_folder, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ran")
    space = write_space(cwd / "space.yaml", tiny_space(
        colour_folder, study="ran", search={"n_trials": 3, "sampler": {"name": "random", "seed": 1},
                                            "pruner": "none"}))
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = runner.invoke(app, ["run", "--space", str(space)])
        assert result.exit_code == 0, result.output
        yield cwd
    finally:
        os.chdir(old)


def cli(*args):
    return runner.invoke(app, list(args))


@pytest.mark.slow
def test_studies_lists_counts_and_best(ran):
    result = cli("studies")
    assert result.exit_code == 0
    assert "ran: 3 trials (3 complete, 0 pruned, 0 failed, 0 running), best " in result.output
    rows = json.loads(cli("studies", "--json").output)
    assert rows[0]["study"] == "ran" and rows[0]["complete"] == 3


def test_trials_table_and_json(ran):
    table = cli("trials", "--study", "ran").output
    assert "COMPLETE" in table and "lr" in table and "epochs_run" in table
    rows = json.loads(cli("trials", "--study", "ran", "--json").output)
    assert [r["number"] for r in rows] == [0, 1, 2]
    assert all(r["state"] == "COMPLETE" and r["epochs_run"] == 2 for r in rows)


def test_show_prints_config_and_log_tail(ran):
    result = cli("show", "--study", "ran", "--trial", "1")
    assert result.exit_code == 0
    assert "trial 1: COMPLETE" in result.output and '"model": "test_resnet"' in result.output
    assert "Epoch 2 done" in result.output
    info = json.loads(cli("show", "--study", "ran", "--trial", "1", "--json").output)
    assert info["config"]["number"] == 1 and info["log_tail"]
    missing = cli("show", "--study", "ran", "--trial", "9")
    assert missing.exit_code == 2 and "has no trial 9" in missing.output


def test_best_exports_mmcls_into_a_folder_by_convention(ran):
    mmengine = pytest.importorskip("mmengine")
    result = cli("best", "--study", "ran", "--export", "exported/")
    assert result.exit_code == 0, result.output
    files = list((ran / "exported").iterdir())
    assert [f.name for f in files] == ["test_resnet_1xb16-cosine_colours.py"]
    cfg = mmengine.Config.fromfile(str(files[0]))
    best = optuna.load_study(study_name="ran", storage="sqlite:///studies.db").best_trial
    assert cfg.optimizer.lr == pytest.approx(best.params["lr"], rel=1e-5)
    assert cfg.model.head.num_classes == 3
    assert f"val_acc {best.value:.4f}" in files[0].read_text()


@pytest.mark.slow
def test_yaml_export_reruns_with_sweeper_run(ran):
    assert cli("best", "--study", "ran", "--export", "best.yaml").exit_code == 0
    doc = yaml.safe_load((ran / "best.yaml").read_text())
    best = optuna.load_study(study_name="ran", storage="sqlite:///studies.db").best_trial
    assert doc["train"]["lr"] == best.params["lr"] and "space" not in doc
    rerun = cli("run", "--space", "best.yaml")
    assert rerun.exit_code == 0, rerun.output
    study = optuna.load_study(study_name=doc["study"], storage="sqlite:///studies.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    config = json.loads((ran / "trials" / doc["study"] / "0" / "config.json").read_text())
    assert config["lr"] == best.params["lr"] and config["model"] == "test_resnet"


def test_report_of_the_real_study(ran):
    result = cli("report", "--study", "ran")
    assert result.exit_code == 0, result.output
    text = (ran / "trials" / "ran" / "report.html").read_text()
    assert ">Learning curves</h2>" in text and "PED-ANOVA and fANOVA over 3 completed trials" in text


def test_best_of_a_study_without_completed_trials(ran):
    optuna.create_study(study_name="empty", storage="sqlite:///studies.db")
    result = cli("best", "--study", "empty")
    assert result.exit_code == 2 and "has no completed trial yet" in result.output
