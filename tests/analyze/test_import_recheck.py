"""`import` turns a results CSV into completed trials; `recheck` retrains the best configurations
with new seeds, and a lucky imported score falls back behind a configuration that holds up."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.testing import tiny_space, write_space

runner = CliRunner()
SHIPPED = Path(__file__).resolve().parents[2] / "search_spaces"


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _trials(name: str = "rc"):
    return optuna.load_study(study_name=name, storage="sqlite:///studies.db").get_trials()


@pytest.fixture
def in_tmp(tmp_path):
    old = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


def test_the_users_manual_runs_import_into_the_caltech_space(in_tmp):
    result = cli("import", "--study", "caltech", "--space", SHIPPED / "resnet.yaml",
                 "--from", SHIPPED / "caltech_manual.csv")
    assert result.exit_code == 0, result.output
    assert "imported 12 completed trial(s)" in result.output
    trials = _trials("caltech")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 12
    assert trials[9].params == {"lr": 0.1, "batch_size": 32, "frozen_stages": 2, "schedule": "step",
                                "milestones": "[20, 40, 60]", "augment": "swin_randaug"}
    assert trials[9].value == 0.905 and "unstable" in trials[9].user_attrs["note"]
    assert "milestones" not in trials[10].params  # the cosine run: milestones do not apply
    best = cli("best", "--study", "caltech")
    assert "best trial 9: val_acc 0.9050" in best.output
    assert "imported from caltech_manual.csv (line 11)" in best.output
    # importing the same file again adds nothing
    again = cli("import", "--study", "caltech", "--space", SHIPPED / "resnet.yaml",
                "--from", SHIPPED / "caltech_manual.csv")
    assert again.exit_code == 0 and "imported 0 completed" in again.output
    assert len(_trials("caltech")) == 12
    # the report sees them too
    report = cli("report", "--study", "caltech")
    assert report.exit_code == 0, report.output
    assert "12 complete" in report.output


def test_rows_outside_the_space_are_skipped_with_the_reason(in_tmp, colour_folder):
    space = write_space(in_tmp / "space.yaml", tiny_space(
        colour_folder, study="imp", space={"lr": {"low": 0.01, "high": 0.1, "log": True},
                                           "batch_size": [8, 16]}))
    (in_tmp / "runs.csv").write_text("lr,batch_size,val_acc\n0.05,16,0.8\n0.5,16,0.9\n"
                                     "0.02,12,0.7\n0.03,8,85\n0.04,,0.6\n")
    result = cli("import", "--study", "imp", "--space", space, "--from", "runs.csv", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["imported"] == 1
    reasons = {s["line"]: s["reason"] for s in out["skipped"]}
    assert "lr=0.5 is outside the space" in reasons[3]
    assert "batch_size=12 is outside the space" in reasons[4]
    assert "not a fraction in [0, 1]; for a percentage write 0.85" in reasons[5]
    assert "no value for batch_size" in reasons[6]
    [trial] = _trials("imp")
    assert trial.params == {"lr": 0.05, "batch_size": 16} and trial.value == 0.8
    trials = cli("trials", "--study", "imp")
    assert "imported from runs.csv" in trials.output


def test_an_unreadable_or_misnamed_file_writes_nothing(in_tmp, colour_folder):
    space = write_space(in_tmp / "space.yaml", tiny_space(colour_folder, study="imp"))
    (in_tmp / "bad.csv").write_text("learning_rate,val_acc\n0.05,0.8\n")
    result = cli("import", "--study", "imp", "--space", space, "--from", "bad.csv")
    assert result.exit_code == 2
    assert "column 'learning_rate'" in result.output and "column 'lr': missing" in result.output
    assert "Traceback" not in result.output
    missing = cli("import", "--study", "imp", "--space", space, "--from", "nope.csv")
    assert missing.exit_code == 2 and "nope.csv: file not found" in missing.output
    (in_tmp / "binary.csv").write_bytes(b"\xff\xfe\x00\x81lr")
    binary = cli("import", "--study", "imp", "--space", space, "--from", "binary.csv")
    assert binary.exit_code == 2 and "cannot be read as CSV" in binary.output
    assert not (in_tmp / "studies.db").exists()


@pytest.fixture
def lucky_study(in_tmp, colour_folder):
    """Trial 0: an imported 0.999 for lr=1e-6 (which cannot learn in 2 epochs); trial 1: lr=0.05,
    trained for real."""
    space = write_space(in_tmp / "space.yaml", tiny_space(
        colour_folder, study="rc", space={"lr": [0.000001, 0.05]}, enqueue=[{"lr": 0.05}],
        search={"n_trials": 1, "sampler": {"name": "random", "seed": 0}, "pruner": "none"}))
    (in_tmp / "lucky.csv").write_text("lr,val_acc,note\n0.000001,0.999,a lucky run\n")
    assert cli("import", "--study", "rc", "--space", space, "--from", "lucky.csv").exit_code == 0
    result = cli("run", "--space", space)  # imported runs are not part of n_trials: one trained
    assert result.exit_code == 0, result.output
    assert "study rc: 2 trials (2 complete" in result.output
    return in_tmp


@pytest.mark.slow
def test_recheck_adds_seeds_and_the_lucky_configuration_falls_back(lucky_study):
    before = cli("best", "--study", "rc")
    assert "best trial 0: val_acc 0.9990" in before.output

    first = cli("recheck", "--study", "rc", "--top", 2, "--seeds", 1)
    assert first.exit_code == 0, first.output
    more = cli("recheck", "--study", "rc", "--top", 2, "--seeds", 2)  # resumes: one more each
    assert more.exit_code == 0, more.output
    assert "2 run(s)" in more.output
    trials = _trials()
    reruns = [t for t in trials if "recheck_of" in t.user_attrs]
    assert sorted((t.user_attrs["recheck_of"], t.user_attrs["recheck_seed"]) for t in reruns) == \
        [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert all(t.state == TrialState.COMPLETE and len(t.intermediate_values) == 2 for t in reruns)
    for t in reruns:  # each trained with its own seed, in its own folder, the same params
        config = json.loads((Path(t.user_attrs["trial_dir"]) / "config.json").read_text())
        assert config["seed"] == t.user_attrs["recheck_seed"]
        assert config["lr"] == {0: 0.000001, 1: 0.05}[t.user_attrs["recheck_of"]]

    after = cli("best", "--study", "rc")
    assert after.exit_code == 0
    assert after.output.startswith("best configuration: trial 1, val_acc mean ")
    runs_of_0 = [0.999] + [t.value for t in reruns if t.user_attrs["recheck_of"] == 0]
    mean_0 = sum(runs_of_0) / 3
    table = cli("trials", "--study", "rc").output
    assert "recheck of 0 (seed +2)" in table
    info = json.loads(cli("best", "--study", "rc", "--by", "first", "--json").output)
    assert info["trial"] == 0 and info["runs"] == 3 and info["mean"] == pytest.approx(mean_0)
    assert info["lucky"] is True  # 0.999 is more than one standard deviation above the mean
    assert "a lucky run" in cli("best", "--study", "rc", "--by", "first").output

    report = cli("report", "--study", "rc")
    assert report.exit_code == 0, report.output
    html = Path("trials/rc/report.html").read_text()
    assert "<td class='best-configuration'>trial 1: val_acc mean " in html
    assert html.count("yes: first score &gt; 1 std above the mean") == 1  # configuration 0 only

    again = cli("recheck", "--study", "rc", "--top", 2, "--seeds", 2)
    assert "nothing to do" in again.output and len(_trials()) == len(trials)


def test_recheck_of_a_missing_study_says_so(in_tmp):
    result = cli("recheck", "--study", "nope")
    assert result.exit_code == 2 and "Error:" in result.output and "Traceback" not in result.output


def test_a_value_off_a_float_step_grid_is_skipped_not_a_crash(in_tmp):
    space = write_space(in_tmp / "space.yaml", tiny_space(
        None, study="grid", space={"lr": {"low": 0.01, "high": 0.1, "step": 0.01}}))
    (in_tmp / "runs.csv").write_text("lr,val_acc\n0.015,0.5\n0.02,0.6\n")
    result = cli("import", "--study", "grid", "--space", space, "--from", "runs.csv")
    assert result.exit_code == 0, result.output
    assert "skipped line 2: lr=0.015 is outside the space (float [0.01, 0.1] step 0.01)" in result.output
    assert [t.params["lr"] for t in _trials("grid")] == [0.02]
