"""The multi-fidelity sampler learns from paused and pruned trials at the epoch BOHB's rule names.

Expected values come from the rule as Falkner et al. 2018 state it (the highest budget with at
least n_min observations) and from Optuna's own TPE split, not from sweeper's view code.
"""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.samplers._tpe.sampler import _split_trials
from optuna.trial import TrialState, create_trial

from sweeper.search.asha import PAUSED
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
    seen = sampler.view_for(study, study._storage.get_trial(trial._trial_id))
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
        seen = sampler.view_for(study, study._storage.get_trial(trial._trial_id))
        assert seen.fidelity == expected, n_min
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
