"""Successive halving that pauses and promotes (asha.py): the rule alone, then real workers; and
the epoch budget shared by two orchestrators."""

from __future__ import annotations

import csv

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from processes import finish, start, trials
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.search.asha import AshaPruner
from sweeper.spec.sweep_spec import parse_spec
from sweeper.testing import tiny_space, write_space


def _at(values: dict[int, float], number: int):
    t = create_trial(state=TrialState.RUNNING, params={"lr": 0.1},
                     distributions={"lr": FloatDistribution(0.01, 1.0)}, intermediate_values=values)
    t.number = number
    return t


def test_rungs_follow_min_resource_times_eta_to_the_k():
    assert AshaPruner(1, 3).rungs(100) == [1, 3, 9, 27, 81]
    assert AshaPruner(2, 2).rungs(16) == [2, 4, 8]
    assert AshaPruner(1, 2, max_resource=2).rungs(3) == [1]  # past max_resource: no more rungs


def test_a_half_epoch_first_rung_puts_every_rung_half_way_through_an_epoch():
    asha = AshaPruner(0.5, 3)
    assert asha.rungs(8) == [0.5, 1.5, 4.5] and asha.part_rungs(8) == (0.5, 1.5, 4.5)
    assert AshaPruner(0.5, 3, max_resource=1).rungs(8) == [0.5] and AshaPruner(1, 3).part_rungs(8) == ()
    halves = [_at({}, n) for n in range(3)]
    for t, v in zip(halves, [0.2, 0.9, 0.5]):
        t.user_attrs["part_values"] = {"0.5": v}
    assert [asha.promotable(n, 0.5, halves) for n in range(3)] == [False, True, False]


def test_a_trial_is_promotable_in_the_top_one_over_eta_at_its_rung():
    asha = AshaPruner(1, 3)
    trials = [_at({1: v}, n) for n, v in enumerate([0.5, 0.9, 0.1, 0.7, 0.3])]
    # 5 values at rung 1: the top floor(5/3) = 1 is trial 1
    assert [asha.promotable(n, 1, trials) for n in range(5)] == [False, True, False, False, False]
    trials.append(_at({1: 0.8}, 5))  # 6 values: the top 2 are trials 1 and 5; trial 3 is not yet
    assert [asha.promotable(n, 1, trials) for n in range(6)] == [False, True, False, False, False, True]
    assert not asha.promotable(0, 1, trials[:2])  # 2 values: top 0, nobody goes on yet


@pytest.mark.parametrize("options, message", [
    ({"reduction_factor": 1}, "reduction_factor must be an integer >= 2"),
    ({"min_resource": 0}, "min_resource must be an integer >= 1 or 0.5 (half an epoch)"),
    ({"min_resource": 2, "max_resource": 2}, "max_resource must be an integer > min_resource"),
])
def test_bad_asha_options_name_the_key(options, message, tmp_path, colour_folder):
    doc = tiny_space(colour_folder, search={"pruner": {"name": "asha", **options}})
    result = CliRunner().invoke(app, ["run", "--space", str(write_space(tmp_path / "s.yaml", doc))])
    assert result.exit_code == 2 and "search.pruner" in result.output and message in result.output
    assert not (tmp_path / "studies.db").exists()


def _rows(folder, study, number) -> list[str]:
    with open(folder / "trials" / study / str(number) / "metrics.csv") as f:
        return [row["epoch"] for row in csv.DictReader(f)]


@pytest.mark.slow
def test_asha_pauses_promotes_and_resumes_real_workers(colour_folder, tmp_path):
    # one rung, at epoch 1; a good configuration first, then two hopeless ones (lr ~ 0)
    doc = tiny_space(colour_folder, study="asha", train={"epochs": 3, "batch_size": 8},
                     search={"n_trials": 3, "sampler": {"name": "random", "seed": 0},
                             "pruner": {"name": "asha", "min_resource": 1, "reduction_factor": 2,
                                        "max_resource": 2}},
                     space={"lr": [0.05, 1.0e-6, 2.0e-6]},
                     enqueue=[{"lr": 0.05}, {"lr": 1.0e-6}, {"lr": 2.0e-6}])
    code, out = finish(start(tmp_path, "--space", str(write_space(tmp_path / "space.yaml", doc))))
    assert code == 0, out
    good, bad, worse = trials(tmp_path, "asha")
    # trial 0 is alone at rung 1: paused; trial 1 arrives below it: trial 0 is now the top
    # 1/2 of 2 and is resumed before trial 2 is asked; trials 1 and 2 never are
    assert good.state == TrialState.COMPLETE
    assert good.user_attrs["pauses"] == [1] and len(good.user_attrs["segments"]) == 2
    assert "Resumed after epoch 1" in (tmp_path / "trials/asha/0/log.txt").read_text()
    assert "trial 0: promoted at rung 1; resumed" in out
    for t in (bad, worse):
        assert t.state == TrialState.PRUNED and t.user_attrs["reason"] == "not promoted at rung 1"
    # no epoch trained twice: one metrics row per epoch, and the store agrees
    assert [_rows(tmp_path, "asha", n) for n in range(3)] == [["1", "2", "3"], ["1"], ["1"]]
    assert sorted(good.intermediate_values) == [1, 2, 3]
    assert "epochs: 5 trained, 4 saved by pruning and pausing, 0 retrained" in out
    assert not [t for t in trials(tmp_path, "asha") if t.state == TrialState.RUNNING]
    assert not list((tmp_path / "trials" / "asha").rglob("resume.pt"))

    # the report marks the pause on the learning curves and shows the two stretches trial 0 ran
    report = CliRunner().invoke(app, ["report", "--study", "asha", "--storage", f"sqlite:///{tmp_path}/studies.db",
                                      "--out", str(tmp_path / "report.html")])
    assert report.exit_code == 0, report.output
    page = (tmp_path / "report.html").read_text()
    assert "paused, then promoted and resumed" in page and "paused, never promoted" in page
    assert "5 trained, 4 saved by pruning and pausing, 0 retrained" in page
    assert page.count('"#0"') == 2  # two timeline bars for trial 0


@pytest.mark.slow
def test_the_epoch_budget_stops_two_orchestrators_within_one_epoch(colour_folder, tmp_path):
    budget = 7
    doc = tiny_space(colour_folder, study="budget", train={"epochs": 3, "batch_size": 8},
                     search={"n_trials": 50, "sampler": {"name": "random", "seed": 0}, "pruner": "none",
                             "budget": {"epochs": budget}})
    spec = str(write_space(tmp_path / "space.yaml", doc))
    procs = [start(tmp_path, "--space", spec), start(tmp_path, "--space", spec)]
    for proc in procs:
        code, out = finish(proc)
        assert code == 0, out
    final = trials(tmp_path, "budget")
    trained = sum(len(t.intermediate_values) for t in final)
    assert budget <= trained <= budget + 1
    assert not [t for t in final if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    stopped = [t for t in final if t.state == TrialState.PRUNED]
    # stopped by the budget, or to keep what the best unfinished trial needs (sweep/reserve.py)
    assert all(t.user_attrs["reason"] == "epoch budget spent"
               or t.user_attrs["reason"].startswith("budget kept for trial ") for t in stopped)
    assert f"of a budget of {budget}" in out


def test_budget_epochs_option_overrides_the_file(colour_folder):
    doc = tiny_space(colour_folder, search={"budget": {"epochs": 40}})
    assert parse_spec(doc, "s", {"budget_epochs": 12}).search.budget_epochs == 12
    assert parse_spec(doc, "s").search.budget_epochs == 40
    with pytest.raises(Exception, match="search.budget.epochs"):
        parse_spec(tiny_space(colour_folder, search={"budget": {"epochs": 0}}), "s")


def test_optuna_never_prunes_for_asha():
    study = optuna.create_study(direction="maximize", pruner=AshaPruner(1, 2))
    trial = study.ask()
    trial.report(0.0, 1)
    assert not trial.should_prune()


@pytest.mark.slow
def test_asha_with_two_orchestrators_and_two_workers_ends_with_nothing_running(colour_folder, tmp_path):
    doc = tiny_space(colour_folder, study="asha2", train={"epochs": 3, "batch_size": 8},
                     search={"n_trials": 6, "sampler": {"name": "random", "seed": 0},
                             "pruner": {"name": "asha", "min_resource": 1, "reduction_factor": 2}},
                     space={"lr": {"low": 1.0e-6, "high": 0.1, "log": True}})
    spec = str(write_space(tmp_path / "space.yaml", doc))
    procs = [start(tmp_path, "--space", spec, "--workers", "2"), start(tmp_path, "--space", spec)]
    outs = []
    for proc in procs:
        code, out = finish(proc, timeout=600)
        assert code == 0, out
        outs.append(out)
    final = trials(tmp_path, "asha2")
    assert len(final) == 6
    assert not [t for t in final if t.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL)]
    assert any(t.state == TrialState.COMPLETE for t in final)
    for t in final:  # never an epoch twice, whichever orchestrator resumed it
        rows = _rows(tmp_path, "asha2", t.number)
        assert rows == [str(e) for e in range(1, len(rows) + 1)] and len(rows) == len(t.intermediate_values)
    assert all("0 retrained" in out for out in outs)
