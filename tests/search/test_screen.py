"""Screening (search/screen.py) with the prior sampler (search/prior.py): the plan, full rungs,
the pool's draws, and a real sweep."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from processes import finish, start, trials
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.search.prior import PriorSampler
from sweeper.search.screen import ScreenPruner, plan
from sweeper.spec.sweep_spec import parse_spec
from sweeper.testing import tiny_space, write_space


def _trial(number: int, values: dict[int, float], state=TrialState.RUNNING, paused: bool = False):
    t = create_trial(state=state, params={"lr": 0.1}, distributions={"lr": FloatDistribution(0.01, 1.0)},
                     intermediate_values=values, user_attrs={"paused": paused},
                     value=max(values.values()) if state == TrialState.COMPLETE else None)
    t.number = number
    return t


def _successive_halving_cost(pool: int, rungs: list[int], epochs: int, eta: int) -> int:
    """Epochs of one synchronous successive-halving bracket (Jamieson & Talwalkar 2016): n_k =
    floor(n_{k-1} / eta) (at least 1) trials train from rung k-1 to rung k, then to the end."""
    sizes = [pool]
    for _ in rungs:
        sizes.append(max(1, sizes[-1] // eta))
    ends, starts = [*rungs, epochs], [0, *rungs]
    return sum(n * (end - start) for n, start, end in zip(sizes, starts, ends))


@pytest.mark.parametrize("budget, workers", [(12, 1), (24, 2), (48, 2), (100, 3)])
def test_the_pool_is_the_largest_bracket_that_fits_the_budget_less_a_running_epoch_per_extra_worker(budget, workers):
    p = plan(8, 1, 3, budget, 1000, workers)
    assert p.rungs == (1, 3)
    room = budget - (workers - 1)
    assert _successive_halving_cost(p.pool, [1, 3], 8, 3) <= room < _successive_halving_cost(p.pool + 1, [1, 3], 8, 3)
    assert p.cost == _successive_halving_cost(p.pool, [1, 3], 8, 3)


def test_without_a_budget_the_pool_is_n_trials():
    assert plan(9, 1, 3, None, 20).sizes == (20, 6, 2)


def test_a_rung_is_decided_only_once_full():
    pruner = ScreenPruner(1, 3)
    pruner.plan = plan(8, 1, 3, None, 4)  # 4 to rung 1, 1 on to rung 3, 1 to the end
    arrived = [_trial(0, {1: 0.2}, paused=True), _trial(1, {1: 0.9}, paused=True), _trial(2, {1: 0.5}, paused=True)]
    # asha would promote trial 1 now (top 1/3 of 3); screen waits for trial 3
    assert not any(pruner.promotable(n, 1, arrived + [_trial(3, {})]) for n in range(4))
    full = arrived + [_trial(3, {1: 0.95})]
    assert [pruner.promotable(n, 1, full) for n in range(4)] == [False, False, False, True]


def test_a_failed_pool_member_does_not_hold_its_rung_forever():
    pruner = ScreenPruner(1, 3)
    pruner.plan = plan(8, 1, 3, None, 4)
    trials = [_trial(0, {1: 0.2}, paused=True), _trial(1, {1: 0.9}, paused=True), _trial(2, {1: 0.5}, paused=True),
              _trial(3, {}, state=TrialState.FAIL)]
    assert [pruner.promotable(n, 1, trials) for n in range(4)] == [False, True, False, False]


def test_a_promoted_trial_that_has_not_resumed_yet_keeps_the_next_rung_open():
    pruner = ScreenPruner(1, 2)
    pruner.plan = plan(8, 1, 2, None, 4)  # rungs 1, 2, 4; 4 -> 2 -> 1 -> 1
    trials = [_trial(0, {1: 0.9, 2: 0.8}, paused=True), _trial(1, {1: 0.8}, paused=True),
              _trial(2, {1: 0.1}, paused=True), _trial(3, {1: 0.2}, paused=True)]
    # trial 1 is in the top 2 at rung 1 and paused: it will reach rung 2, so rung 2 is not full
    assert not pruner.promotable(0, 2, trials)
    trials[1] = _trial(1, {1: 0.8, 2: 0.7}, paused=True)
    assert pruner.promotable(0, 2, trials) and not pruner.promotable(1, 2, trials)


def _ask(study: optuna.Study, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append({"lr": trial.suggest_float("lr", 0.01, 1.0, log=True),
                    "aug": trial.suggest_categorical("aug", ["a", "b", "c"])})
        study.tell(trial, 0.5)
    return out


def test_the_prior_sampler_alternates_known_configurations_and_uniform_draws_then_mutates(tmp_path):
    known = [{"lr": 0.1, "aug": "a"}, {"lr": 0.5, "aug": "b"}]
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", direction="maximize",
                                sampler=PriorSampler(known, seed=3))
    drawn = _ask(study, 6)
    prior, uniform = drawn[0::2], drawn[1::2]
    assert sorted(prior[:2], key=lambda c: c["lr"]) == known  # each known configuration once
    assert all(c not in known for c in uniform + prior[2:])  # then mutations, never a repeat
    assert all(0.01 <= c["lr"] <= 1.0 and c["aug"] in "abc" for c in drawn)
    # the store holds the draws as trials; nothing was queued
    stored = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path}/s.db").get_trials()
    assert [t.params["lr"] for t in stored] == [c["lr"] for c in drawn]
    assert not [t for t in stored if t.state == TrialState.WAITING]


def test_a_second_run_of_the_study_does_not_repeat_a_known_configuration(tmp_path):
    known = [{"lr": 0.1, "aug": "a"}, {"lr": 0.5, "aug": "b"}]
    url = f"sqlite:///{tmp_path}/s.db"
    first = _ask(optuna.create_study(storage=url, study_name="s", direction="maximize",
                                     sampler=PriorSampler(known, seed=0)), 1)
    second = optuna.load_study(study_name="s", storage=url, sampler=PriorSampler(known, seed=1))
    again = _ask(second, 2)[1]  # trial 1 is uniform, trial 2 a prior draw
    assert first[0] in known and again in known and again != first[0]


def test_uniform_share_one_never_draws_the_known_configurations(tmp_path):
    known = [{"lr": 0.1, "aug": "a"}]
    study = optuna.create_study(direction="maximize", sampler=PriorSampler(known, uniform_share=1.0, seed=0))
    assert known[0] not in _ask(study, 4)


def test_mutations_off_a_conditional_parameter_do_not_repeat_a_tried_configuration():
    """A mutation that moves schedule off step keeps the known configuration's milestones, which
    the trial never asks for: it must still count as tried (seen: 14 of 20 seeds repeated one)."""
    known = [{"schedule": "step", "milestones": "[3, 6]", "bs": 32, "aug": "none"}]
    for seed in range(20):
        study = optuna.create_study(sampler=PriorSampler(known, uniform_share=0.0, seed=seed))
        seen = []
        for _ in range(8):  # of 18 configurations in all
            t = study.ask()
            c = {"schedule": t.suggest_categorical("schedule", ["step", "cosine"])}
            if c["schedule"] == "step":
                c["milestones"] = t.suggest_categorical("milestones", ["[3, 6]", "[5, 7]"])
            c["bs"] = t.suggest_categorical("bs", [32, 64, 128])
            c["aug"] = t.suggest_categorical("aug", ["none", "ra"])
            study.tell(t, 0.0)
            seen.append(c)
        assert all(c not in seen[:i] for i, c in enumerate(seen)), (seed, seen)


def test_a_screening_pool_is_no_larger_than_the_grid(tmp_path, colour_folder):
    doc = tiny_space(colour_folder, train={"epochs": 8}, search={
        "n_trials": 20, "sampler": {"name": "grid"}, "pruner": {"name": "screen", "min_resource": 0.5}},
        space={"lr": [0.01, 0.02, 0.05, 0.1], "batch_size": [8, 16]})
    result = CliRunner().invoke(app, ["run", "--space", str(write_space(tmp_path / "s.yaml", doc)), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "pool 8; 8 trial(s) epochs 0->0.5" in result.output  # 4 x 2 points, not n_trials' 20


@pytest.mark.parametrize("sampler, pruner, message", [
    ({"name": "prior", "uniform_share": 1.5}, "none", "uniform_share must be a number in [0, 1]"),
    ({"name": "prior", "mutation_std": 0}, "none", "mutation_std must be a number > 0"),
    ({"name": "prior", "known": []}, "none", "search.sampler.known: not an option of prior"),
    ({"name": "random"}, {"name": "screen", "reduction_factor": 1}, "reduction_factor must be an integer >= 2"),
])
def test_bad_prior_and_screen_options_name_the_key(sampler, pruner, message, tmp_path, colour_folder):
    doc = tiny_space(colour_folder, search={"sampler": sampler, "pruner": pruner})
    result = CliRunner().invoke(app, ["run", "--space", str(write_space(tmp_path / "s.yaml", doc))])
    assert result.exit_code == 2 and "search." in result.output and message in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "studies.db").exists()


def test_dry_run_prints_the_plan(tmp_path, colour_folder):
    doc = tiny_space(colour_folder, train={"epochs": 8}, search={
        "n_trials": 100, "budget": {"epochs": 24}, "sampler": {"name": "prior", "seed": 0},
        "pruner": {"name": "screen", "min_resource": 1, "reduction_factor": 3}},
        space={"lr": [0.01, 0.02, 0.05, 0.1]}, enqueue=[{"lr": 0.05}, {"lr": 0.02}])
    result = CliRunner().invoke(app, ["run", "--space", str(write_space(tmp_path / "s.yaml", doc)),
                                      "--workers", "2", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "prior: 2 known configurations from enqueue, 0 from search.prior" in result.output
    assert "pool 11; 11 trial(s) epochs 0->1 (11); 3 trial(s) epochs 1->3 (6); 1 trial(s) epochs 3->8 (5); " \
           "22 epochs in all of a budget of 24" in result.output
    assert not (tmp_path / "studies.db").exists()


@pytest.mark.slow
def test_a_screening_sweep_decides_on_full_rungs_and_stays_in_its_budget(colour_folder, tmp_path):
    # 4 epochs, rungs at 1 and 3: at a budget of 8, 5 trials to epoch 1, 1 on to 3, 1 to 4 (5 + 2 + 1)
    doc = tiny_space(colour_folder, study="screen", train={"epochs": 4, "batch_size": 8},
                     search={"n_trials": 50, "budget": {"epochs": 8}, "sampler": {"name": "prior", "seed": 0},
                             "pruner": {"name": "screen", "min_resource": 1, "reduction_factor": 3}},
                     space={"lr": {"low": 1.0e-6, "high": 0.1, "log": True}},
                     enqueue=[{"lr": 1.0e-6}, {"lr": 0.05}])
    expected = parse_spec(doc, "x", {}).screen_plan(1)
    assert expected.sizes == (5, 1, 1) and expected.cost == 8
    code, out = finish(start(tmp_path, "--space", str(write_space(tmp_path / "space.yaml", doc))))
    assert code == 0, out
    assert "screen: pool 5;" in out
    final = trials(tmp_path, "screen")
    assert len(final) == 5 and not [t for t in final if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(len(t.intermediate_values) for t in final) <= 8
    # the known configurations were drawn by the sampler (trials 0 and 2), not queued
    assert {final[0].params["lr"], final[2].params["lr"]} == {1.0e-6, 0.05}
    # nobody went past epoch 1 before all five had reported it: the first four paused there
    assert all(t.user_attrs.get("pauses", [None])[0] == 1 for t in final[:4])
    done = [t for t in final if t.state == TrialState.COMPLETE]
    assert len(done) == 1 and max(done[0].intermediate_values) == 4
    best_at_1 = max(final, key=lambda t: (t.intermediate_values[1], -t.number))
    assert done[0].number == best_at_1.number
    reasons = [t.user_attrs["reason"] for t in final if t.state == TrialState.PRUNED]
    # the last arrival at a full rung may be stopped by the reserve (reserve.py) rather than paused
    assert reasons and all(r == "not promoted at rung 1" or r == f"budget kept for trial {done[0].number}"
                           for r in reasons), reasons


@pytest.mark.slow
def test_a_half_epoch_first_rung_pauses_trials_mid_epoch_and_resumes_the_best_there(colour_folder, tmp_path):
    # 4 epochs, rungs at 0.5 and 2 (0.5 x 3 rounded up): at a budget of 6, 5 trials train half an
    # epoch, 1 goes on to epoch 2 and to the end: 2.5 + 1.5 + 2 = 6
    doc = tiny_space(colour_folder, study="half", train={"epochs": 4, "batch_size": 4},
                     search={"n_trials": 50, "budget": {"epochs": 6}, "sampler": {"name": "random", "seed": 1},
                             "pruner": {"name": "screen", "min_resource": 0.5, "reduction_factor": 3}},
                     space={"lr": [1.0e-6, 2.0e-6, 0.05]}, enqueue=[{"lr": 0.05}])  # trial 0 is the best
    assert parse_spec(doc, "x", {}).screen_plan(1).sizes == (5, 1, 1)
    code, out = finish(start(tmp_path, "--space", str(write_space(tmp_path / "space.yaml", doc))))
    assert code == 0, out
    final = trials(tmp_path, "half")
    assert len(final) == 5 and not [t for t in final if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    halves = {t.number: t.user_attrs["part_values"]["0.5"] for t in final}
    best = max(halves, key=lambda n: (halves[n], -n))
    done = [t for t in final if t.state == TrialState.COMPLETE]
    assert [t.number for t in done] == [best] and sorted(done[0].intermediate_values) == [1, 2, 3, 4]
    for t in final:
        rows = [r.split(",")[0] for r in (tmp_path / "trials/half" / str(t.number) / "metrics.csv").read_text().split()[1:]]
        assert rows == (["0.5", "1", "2", "3", "4"] if t.number == best else ["0.5"]), (t.number, rows)
        if t.number != best:
            assert t.state == TrialState.PRUNED and t.user_attrs["epochs_run"] == 0.5
    assert "epochs: 6 trained of a budget of 6" in out
    # trial 0 arrived first at a rung that was not yet full: paused mid-epoch, then resumed there
    assert best == 0 and done[0].user_attrs["pauses"] == [0.5]
    assert "Resumed after step" in (tmp_path / "trials/half/0/log.txt").read_text()
    assert "trial 0: promoted at rung 0.5; resumed" in out
    # the report's learning curves and pause marks sit at the half epoch
    report = CliRunner().invoke(app, ["report", "--study", "half", "--storage", f"sqlite:///{tmp_path}/studies.db",
                                      "--out", str(tmp_path / "report.html")])
    assert report.exit_code == 0, report.output
    page = (tmp_path / "report.html").read_text()
    xs = [list(np.frombuffer(base64.b64decode(json.loads(f'"{b}"')), dtype="f8"))
          for b in re.findall(r'"x":\{"dtype":"f8","bdata":"([^"]*)"\}', page)]  # plotly's binary arrays
    assert [0.5, 1, 2, 3, 4] in xs and [0.5] in xs and "paused, then promoted and resumed" in page


@pytest.mark.slow
def test_an_earlier_studys_best_configurations_are_the_prior_of_the_next(colour_folder, tmp_path):
    first = tiny_space(colour_folder, study="before", train={"epochs": 1, "batch_size": 8},
                       search={"n_trials": 3, "sampler": {"name": "random", "seed": 0}},
                       space={"lr": [1.0e-6, 0.05, 0.02], "frozen_stages": [-1, 1]})
    code, out = finish(start(tmp_path, "--space", str(write_space(tmp_path / "first.yaml", first))))
    assert code == 0, out
    ranked = sorted(trials(tmp_path, "before"), key=lambda t: (-t.value, t.number))
    # the next study searches lr and batch_size: frozen_stages is left out, batch_size drawn
    nxt = tiny_space(colour_folder, study="after", train={"epochs": 1},
                     search={"n_trials": 3, "sampler": {"name": "prior", "seed": 0, "uniform_share": 0.0},
                             "prior": {"studies": ["before"], "top": 2}},
                     space={"lr": [1.0e-6, 0.05, 0.02], "batch_size": [4, 8]})
    path = str(write_space(tmp_path / "next.yaml", nxt))
    dry = CliRunner().invoke(app, ["run", "--space", path, "--storage", f"sqlite:///{tmp_path}/studies.db",
                                   "--dry-run"])
    assert dry.exit_code == 0 and "2 from search.prior" in dry.output, dry.output
    code, out = finish(start(tmp_path, "--space", path))
    assert code == 0, out
    assert "search.prior: before's frozen_stages not searched here: left out" in out
    assert "search.prior: 2 configuration(s) from before" in out
    after = trials(tmp_path, "after")
    assert sorted(t.params["lr"] for t in after[:2]) == sorted(t.params["lr"] for t in ranked[:2])
    assert after[2].params["lr"] not in {t.params["lr"] for t in after[:2]}  # then a mutation, not a repeat


@pytest.mark.parametrize("prior, message", [
    ({"studies": ["nowhere"]}, "search.prior.studies[0]: no study 'nowhere'"),
    ({"studies": ["before"], "top": 0}, "search.prior.top: must be an integer >= 1"),
    ({"studies": "before"}, "search.prior.studies: must be a non-empty list"),
    ({"study": ["before"]}, "search.prior: must be {studies: [NAME, ...], top: K}"),
])
def test_a_bad_prior_names_the_key_and_leaves_the_store_untouched(prior, message, tmp_path, colour_folder):
    url = f"sqlite:///{tmp_path}/studies.db"
    optuna.create_study(storage=url, study_name="before")  # an empty study: no trial
    doc = tiny_space(colour_folder, study="after", search={"prior": prior})
    result = CliRunner().invoke(app, ["run", "--space", str(write_space(tmp_path / "s.yaml", doc)), "--storage", url])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["before"]


def test_a_prior_study_without_a_complete_trial_is_refused(tmp_path, colour_folder):
    url = f"sqlite:///{tmp_path}/studies.db"
    optuna.create_study(storage=url, study_name="before")
    doc = tiny_space(colour_folder, study="after", search={"prior": {"studies": ["before"]}})
    result = CliRunner().invoke(app, ["run", "--space", str(write_space(tmp_path / "s.yaml", doc)), "--storage", url])
    assert result.exit_code == 2 and "search.prior.studies[0]: study 'before' has no COMPLETE trial" in result.output


def test_a_queued_trial_the_pool_has_no_room_for_does_not_hold_a_rung_open():
    """Found in review: an enqueued configuration left over (the pool is full) kept rung 1 open
    forever once a pool member had ended below it (a non-finite loss)."""
    pruner = ScreenPruner(1, 3)
    pruner.plan = plan(8, 1, 3, None, 4)
    trials = [_trial(0, {1: 0.2}, paused=True), _trial(1, {1: 0.9}, paused=True), _trial(2, {1: 0.5}, paused=True),
              _trial(3, {}, state=TrialState.PRUNED), _trial(4, {}, state=TrialState.WAITING)]
    assert [pruner.promotable(n, 1, trials) for n in range(5)] == [False, True, False, False, False]
    # with room in the pool, the queued trial will start and may arrive: the rung waits for it
    pruner.plan = plan(8, 1, 3, None, 5)
    assert not any(pruner.promotable(n, 1, trials) for n in range(5))


def test_every_orchestrator_of_a_study_follows_the_first_one_s_plan(tmp_path):
    from sweeper import store
    from sweeper.sweep.setup import shared_plan

    url = f"sqlite:///{tmp_path}/studies.db"
    storage = store.open_storage(url)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    first, second = plan(8, 1, 3, 30, 100, workers=1), plan(8, 1, 3, 30, 100, workers=2)
    assert first.sizes != second.sizes  # (15, 5, 1) and (14, 4, 1)
    assert shared_plan(study, storage, url, first) == first
    again = optuna.load_study(study_name="s", storage=url)
    assert shared_plan(again, storage, url, second) == first


def test_a_prior_value_outside_this_space_is_named_and_drawn_anew(tmp_path, colour_folder):
    from optuna.distributions import CategoricalDistribution

    from sweeper.analyze.prior_studies import known_configurations

    url = f"sqlite:///{tmp_path}/studies.db"
    before = optuna.create_study(storage=url, study_name="before", direction="maximize")
    before.add_trial(create_trial(params={"lr": 0.5, "augment": "z"}, value=0.9, distributions={
        "lr": FloatDistribution(0.01, 1.0), "augment": CategoricalDistribution(["z", "flip_crop"])}))
    spec = parse_spec(tiny_space(colour_folder, search={"prior": {"studies": ["before"]}},
                                 space={"lr": {"low": 0.01, "high": 0.1}, "augment": ["flip_crop", "swin_randaug"]}))
    known, notes = known_configurations(spec, url)
    assert known == [] and notes == ["search.prior: before trial 0's augment='z', lr=0.5 outside this space: drawn anew"]
