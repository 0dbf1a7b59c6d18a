"""The multi-fidelity sampler learns from paused and pruned trials at the epoch BOHB's rule names.

Expected values come from the rule as Falkner et al. 2018 state it (the highest budget with at
least n_min observations) and from Optuna's own TPE split, not from sweeper's view code.
"""

from __future__ import annotations

import inspect
import logging
import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.samplers._tpe.sampler import _split_trials
from optuna.trial import TrialState, create_trial

from sweeper.search.asha import PART_VALUES, PAUSED
from sweeper.search.multi_fidelity import MultiFidelitySampler
from sweeper.search.strategies import Named, create_sampler
from sweeper.spec.sweep_spec import parse_spec
from sweeper.testing import tiny_space

LR = FloatDistribution(1e-4, 1.0, log=True)


def score(lr: float) -> float:
    """Good near lr = 0.01, bad elsewhere."""
    return 0.9 - 0.3 * abs(math.log10(lr) + 2)


def paused_study(tmp_path, sampler, n=13):
    """n trials paused by asha at epoch 1, lr spread evenly over four decades."""
    tmp_path.mkdir(exist_ok=True)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", direction="maximize", sampler=sampler)
    for i in range(n):
        lr = 10 ** (-4 + 4 * i / (n - 1))
        study.add_trial(create_trial(state=TrialState.RUNNING, params={"lr": lr}, distributions={"lr": LR},
                                     intermediate_values={1: score(lr)}, user_attrs={PAUSED: True}))
    return study


def suggestions_near_best(study, n=10) -> int:
    near = 0
    for _ in range(n):
        trial = study.ask()
        near += abs(math.log10(trial.suggest_float("lr", 1e-4, 1.0, log=True)) + 2) < 0.5
        study.tell(trial, state=TrialState.FAIL)  # keep the study as it was
    return near


def test_trials_paused_at_a_half_epoch_rung_are_modelled_there(tmp_path):
    # asha with min_resource 0.5: nine trials paused at 0.5 (their value in PART_VALUES, not an
    # Optuna step), two of them also reached epoch 1; n_min 4 -> the model sees epoch 0.5
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    for i in range(9):
        lr = 10 ** (-4 + 4 * i / 8)
        steps = {1: score(lr)} if i in (0, 8) else {}
        study.add_trial(create_trial(state=TrialState.RUNNING, params={"lr": lr}, distributions={"lr": LR},
                                     intermediate_values=steps,
                                     user_attrs={PAUSED: True, PART_VALUES: {"0.5": score(lr)}}))
    sampler = MultiFidelitySampler(optuna.samplers.TPESampler(seed=0), 4)
    trial = study.ask()
    seen, view = sampler.view_study(study, study._storage.get_trial(trial._trial_id))
    assert seen == 0.5
    values = sorted(t.value for t in view.trials if t.state == TrialState.COMPLETE)
    assert values == sorted(score(10 ** (-4 + 4 * i / 8)) for i in range(9))


@pytest.mark.parametrize("name", ["tpe", "gp"])
def test_suggestions_concentrate_where_paused_trials_are_good(tmp_path, name):
    new = paused_study(tmp_path / "new", create_sampler(Named(name, {"seed": 1}), dict, dimensions=1))
    old = paused_study(tmp_path / "old", create_sampler(Named(name, {"seed": 1, "multi_fidelity": False}), dict))
    # one decade of four around 0.01: a random sampler lands there 1 time in 4
    assert suggestions_near_best(new) >= 8
    assert suggestions_near_best(old) <= 5


def test_a_paused_trial_is_never_a_liar(tmp_path):
    sampler = create_sampler(Named("tpe", {"seed": 0}), dict, dimensions=1)
    study = paused_study(tmp_path, sampler)
    best = max(study.trials, key=lambda t: t.intermediate_values[1]).number
    trial = study.ask()
    _, seen = sampler.view_study(study, study._storage.get_trial(trial._trial_id))
    trials = [t for t in seen.get_trials(deepcopy=False) if t.number != trial.number]
    below, above = _split_trials(seen, trials, 1)  # Optuna's own split, as TPE makes it
    assert [t.number for t in below] == [best]
    assert all(t.state != TrialState.RUNNING for t in trials)
    # today's TPE puts every paused trial, the best included, with the running ones ("bad")
    real = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
    below, above = _split_trials(study, real, 1)
    assert below == [] and best in [t.number for t in above]


def curve(epochs: int, state=TrialState.PRUNED, **attrs):
    values = {e: 0.1 * e for e in range(1, epochs + 1)}
    return create_trial(state=state, params={"lr": 0.01}, distributions={"lr": LR},
                        value=values[epochs] if state == TrialState.COMPLETE else None,
                        intermediate_values=values, user_attrs=attrs)


def test_the_modelled_epoch_is_the_highest_that_n_min_trials_reached(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    # epochs reached: 9 (complete), 3, 3 (paused), 3 (training), 1, 1, 1 (pruned), 5 (failed)
    for t in [curve(9, TrialState.COMPLETE), curve(3), curve(3, TrialState.RUNNING, paused=True),
              curve(3, TrialState.RUNNING), curve(1), curve(1), curve(1), curve(5, TrialState.FAIL)]:
        study.add_trial(t)
    reached = {1: 7, 2: 4, 3: 4, 4: 1, 5: 1, 9: 1}  # trials per epoch, the failed attempt left out
    for n_min in (2, 4, 5, 7, 8):
        expected = max((e for e, n in reached.items() if n >= n_min), default=None)
        sampler = MultiFidelitySampler(optuna.samplers.TPESampler(seed=0), n_min)
        trial = study.ask()
        seen, _ = sampler.view_study(study, study._storage.get_trial(trial._trial_id))
        assert seen == expected, n_min
        study.tell(trial, state=TrialState.FAIL)


def test_random_until_n_min_trials_report_their_first_epoch(tmp_path):
    sampler = create_sampler(Named("tpe", {"seed": 3, "n_min": 4}), dict)
    random = optuna.samplers.RandomSampler(seed=3)  # what TPE draws during its start-up
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/a.db", direction="maximize", sampler=sampler)
    twin = optuna.create_study(storage=f"sqlite:///{tmp_path}/b.db", direction="maximize", sampler=random)
    for i in range(6):
        trial, other = study.ask(), twin.ask()
        lr, expected = (t.suggest_float("lr", 1e-4, 1.0, log=True) for t in (trial, other))
        if i < 4:  # nothing modelled yet: the same random draws
            assert lr == expected
        trial.report(score(lr), 1)  # reported, still training: pending
        study._storage.set_trial_user_attr(trial._trial_id, PAUSED, True)
    # four trials reported epoch 1: the fifth ask was modelled, so the streams part
    assert [t.params["lr"] for t in study.trials][4:] != [t.params["lr"] for t in twin.trials][4:]


@pytest.mark.parametrize("options, message", [
    ({"multi_fidelity": "yes"}, "search.sampler.multi_fidelity: must be true or false"),
    ({"n_min": 1}, "search.sampler.n_min: must be an integer >= 2"),
])
def test_bad_multi_fidelity_options_are_named(options, message):
    from sweeper.errors import SpecError

    with pytest.raises(SpecError, match=message):
        parse_spec(tiny_space(search={"sampler": {"name": "tpe", **options}}))


def test_multi_fidelity_is_only_an_option_of_model_based_samplers():
    from sweeper.errors import SpecError

    with pytest.raises(SpecError, match="search.sampler.multi_fidelity: not an option of random"):
        parse_spec(tiny_space(search={"sampler": {"name": "random", "multi_fidelity": True}}))


@pytest.mark.parametrize("name", ["tpe", "gp"])
def test_a_trial_that_joins_the_view_late_is_checked_against_the_search_space(tmp_path, name):
    # trial 0 is paused with only `a`; trial 1 has `a` and a conditional `b`. Optuna caches the
    # intersection search space up to a trial number; trial 0 turns COMPLETE in the view after
    # that, and must still take `b` out of the space modelled jointly
    sampler = create_sampler(Named(name, {"seed": 0, "n_min": 2}), dict)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", direction="maximize", sampler=sampler)
    a = FloatDistribution(0, 1)
    study.add_trial(create_trial(state=TrialState.RUNNING, params={"a": 0.5}, distributions={"a": a},
                                 user_attrs={PAUSED: True}, intermediate_values={1: 0.3}))
    for value in (0.4, 0.5):
        trial = study.ask()
        trial.suggest_float("a", 0, 1)
        trial.suggest_float("b", 0, 1)
        trial.report(value, 1)
        study.tell(trial, value)
    trial = study.ask()
    assert 0 <= trial.suggest_float("a", 0, 1) <= 1 and 0 <= trial.suggest_float("b", 0, 1) <= 1
    assert "b" not in (trial.relative_search_space or {})


# What the view relies on in Optuna, each pinned so that an upgrade that changes it fails here
# (the module docstring of sweeper/search/multi_fidelity.py lists them).

def frozen(study, trial):
    return study._storage.get_trial(trial._trial_id)


def test_tpe_lies_about_pending_trials_by_default():
    # the view keeps trials training now RUNNING so that TPE counts them as liars
    assert inspect.signature(optuna.samplers.TPESampler).parameters["constant_liar"].default is True


@pytest.mark.parametrize("name", ["tpe", "gp"])
def test_a_trial_training_now_is_pending_in_the_view(tmp_path, name):
    # trials training where the sampler would look next (RUNNING) move its next suggestion
    # (TPE's liars, GP's pending points); failed there (no model reads FAIL), they do not
    def ask(path, state=None, lr=None):
        study = paused_study(path, create_sampler(Named(name, {"seed": 0}), dict, dimensions=1))
        if state is not None:
            study.add_trials([create_trial(state=state, params={"lr": lr}, distributions={"lr": LR})] * 4)
        return study.ask().suggest_float("lr", 1e-4, 1.0, log=True)

    first = ask(tmp_path / "a")
    assert ask(tmp_path / "b", TrialState.FAIL, first) == first
    assert ask(tmp_path / "c", TrialState.RUNNING, first) != first


def test_the_view_holds_every_trial_number_in_the_state_the_model_sees(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    for t in [curve(3, TrialState.COMPLETE), curve(2), curve(1, TrialState.RUNNING, paused=True),
              curve(1), curve(1, TrialState.RUNNING), curve(2, TrialState.FAIL)]:
        study.add_trial(t)  # 0..5
    sampler = MultiFidelitySampler(optuna.samplers.TPESampler(seed=0), n_min=2)
    trial = frozen(study, study.ask())  # 6
    study.enqueue_trial({"lr": 0.01})  # 7: WAITING
    fidelity, seen = sampler.view_study(study, trial)
    assert fidelity == 2  # trials 0 and 1 reached epoch 2 (5 failed: its epochs don't count)
    trials = seen.get_trials(deepcopy=False)
    assert [t.number for t in trials] == list(range(8))
    assert [t.state.name for t in trials] == [
        "COMPLETE", "COMPLETE",  # complete and pruned at epoch >= 2, valued at epoch 2
        "WAITING", "WAITING",  # paused and pruned at epoch 1: out of the view, may join later
        "RUNNING",  # training now: pending
        "FAIL",
        "RUNNING",  # the trial sampled
        "WAITING"]  # enqueued, not started
    assert [t.value for t in trials[:2]] == [pytest.approx(0.2)] * 2
    assert all(t.params == r.params for t, r in zip(trials, study.get_trials()))


@pytest.mark.parametrize("name", ["tpe", "gp"])
def test_asks_past_start_up_write_the_relative_params_to_the_view_not_the_study(tmp_path, name):
    # another study first, so that trial ids in the file are not trial numbers: a write through
    # the real trial's id into the view would hit another trial or fail
    storage = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(storage=storage, study_name="other").add_trials([curve(1)] * 3)
    sampler = create_sampler(Named(name, {"seed": 0}), dict, dimensions=2)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize", sampler=sampler)
    for i in range(8):  # one sampler instance, many asks: one study as Optuna's search space sees it
        trial = study.ask()
        lr, wd = trial.suggest_float("lr", 1e-4, 1.0, log=True), trial.suggest_float("wd", 0, 1)
        trial.report(score(lr) - wd / 10, 1)
        study.tell(trial, score(lr) - wd / 10)
        _, seen = sampler.view_study(study, frozen(study, trial))
        real, own = study.trials[-1], seen.get_trials(deepcopy=False)[trial.number]
        assert real.params == {"lr": lr, "wd": wd} and real.number == own.number == i
        assert not any(k.startswith(f"{name}:relative_params") for k in real.system_attrs)
        if i >= 3:  # modelled (n_min 3): the base shared its params, in the view
            assert any(k.startswith(f"{name}:relative_params") for k in own.system_attrs)


@pytest.mark.parametrize("name", ["tpe", "gp"])
def test_a_trial_that_leaves_the_view_keeps_narrowing_the_search_space_as_in_optuna(tmp_path, name):
    # mirror of the test above: trial 0 (only `a`) is in the view at epoch 1, then leaves it when
    # epoch 2 is modelled. Optuna's intersection only shrinks, as it does for any study once a
    # trial without `b` completed: `b` stays sampled on its own (never a KeyError)
    sampler = create_sampler(Named(name, {"seed": 0, "n_min": 2}), dict)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", direction="maximize", sampler=sampler)
    a, b = FloatDistribution(0, 1), FloatDistribution(0, 1)
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"a": 0.5}, distributions={"a": a},
                                 intermediate_values={1: 0.3}))
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"a": 0.6, "b": 0.5},
                                 distributions={"a": a, "b": b}, intermediate_values={1: 0.4}))
    for value in (0.5, 0.6):
        trial = study.ask()
        trial.suggest_float("a", 0, 1)
        trial.suggest_float("b", 0, 1)
        trial.report(value, 1)
        trial.report(value, 2)
        study.tell(trial, value)
    trial = study.ask()
    assert 0 <= trial.suggest_float("a", 0, 1) <= 1 and 0 <= trial.suggest_float("b", 0, 1) <= 1
    fidelity, seen = sampler.view_study(study, frozen(study, trial))
    assert fidelity == 2 and [t.state.name for t in seen.trials[:2]] == ["WAITING", "WAITING"]
    assert set(trial.relative_search_space) == {"a"}
    # computed afresh on this view, the space would hold `b`: what is modelled is a subset
    fresh = optuna.search_space.IntersectionSearchSpace(include_pruned=name == "tpe")
    assert set(fresh.calculate(seen)) == {"a", "b"}


@pytest.mark.parametrize("name", ["tpe", "gp"])
def test_on_finished_trials_it_samples_as_the_base_sampler_on_the_study(tmp_path, name):
    # every trial complete with its value at epoch 1: the view is the study itself
    base = {"tpe": optuna.samplers.TPESampler, "gp": optuna.samplers.GPSampler}[name]

    def run(path, sampler):
        study = optuna.create_study(storage=f"sqlite:///{path}.db", direction="maximize", sampler=sampler)
        out = []
        for _ in range(7):
            trial = study.ask()
            lr, wd = trial.suggest_float("lr", 1e-4, 1.0, log=True), trial.suggest_float("wd", 0, 1)
            trial.report(score(lr) - wd / 10, 1)
            study.tell(trial, score(lr) - wd / 10)
            out.append((lr, wd))
        return out

    plain = run(tmp_path / "plain", base(seed=2, n_startup_trials=3))
    assert run(tmp_path / "mf", MultiFidelitySampler(base(seed=2, n_startup_trials=3), n_min=3)) == plain


def test_a_trial_built_to_promote_a_paused_one_samples_nothing(tmp_path, monkeypatch):
    sampler = create_sampler(Named("tpe", {"seed": 0}), dict, dimensions=1)
    study = paused_study(tmp_path, sampler)
    built = []
    view_study = sampler.view_study
    monkeypatch.setattr(sampler, "view_study", lambda *a: built.append(a) or view_study(*a))
    paused = study.trials[3]
    trial = optuna.Trial(study, paused._trial_id)  # as promotion.py resumes it
    assert trial.suggest_float("lr", 1e-4, 1.0, log=True) == paused.params["lr"]
    assert built == [] and study.trials[3].params == paused.params


def test_under_hyperband_the_view_holds_every_bracket(tmp_path):
    # Optuna hands samplers a study of the trial's bracket; BOHB models every bracket at an epoch
    sampler = MultiFidelitySampler(optuna.samplers.TPESampler(seed=0, n_startup_trials=2), n_min=2)
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=27, reduction_factor=3)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", direction="maximize",
                                sampler=sampler, pruner=pruner)
    first = study.ask()
    first.report(0.1, 1)
    first.should_prune()  # Hyperband sets its brackets up on its first call
    study.tell(first, state=TrialState.FAIL)
    for i in range(1, 13):
        study.add_trial(curve(1 + i % 3, TrialState.COMPLETE))
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1.0, log=True)  # the view is built here, on the bracket's study
    bracket = optuna.pruners._filter_study(study, frozen(study, trial)).get_trials(deepcopy=False)
    assert len(bracket) < 14  # the filter Optuna applies, which the view reads past
    fidelity, seen = sampler.view_study(study, frozen(study, trial))
    assert fidelity == 3 and [t.number for t in seen.trials] == list(range(14))
    assert [t.state for t in seen.trials[:13]] == [TrialState.FAIL] + [
        TrialState.WAITING, TrialState.COMPLETE, TrialState.WAITING] * 4


def test_no_log_line_per_ask_at_info(tmp_path):
    study = paused_study(tmp_path, create_sampler(Named("tpe", {"seed": 0}), dict, dimensions=1))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    verbosity = optuna.logging.get_verbosity()
    logging.getLogger("optuna").addHandler(handler)
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        suggestions_near_best(study, n=3)
        optuna.create_study()  # the line a user's own in-memory study still gets
    finally:
        logging.getLogger("optuna").removeHandler(handler)
        optuna.logging.set_verbosity(verbosity)
    assert len([r for r in records if "new study created in memory" in r.getMessage()]) == 1
