"""BOHB's rule for TPE and GP: model every trial at the highest epoch enough trials reached.

Optuna's samplers model finished trials by their final value, which throws away what a sweep
with early stopping learns: pruned trials count only as "worse than complete", asha's paused
trials are RUNNING (TPE's constant liar puts them in its "bad" group, GP leaves them pending
forever), and TPE's random start-up lasts until ten trials have *ended*.

Falkner et al. 2018 (BOHB), asynchronous as in Syne Tune's multi-fidelity density estimator:
the model is fit at the highest epoch that at least `n_min` trials have reported, on every
trial that reached it (complete, pruned, paused or still training) with its value *at that
epoch*. Trials training now that have not reached it are pending (TPE's liars, GP's pending
points); paused, pruned or complete trials below it are left out. Until `n_min` trials have
reported an epoch, sampling is random. The base sampler sees this as a study (`FidelityView`),
as Optuna's Hyperband gives each bracket a study of its own.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from typing import Any, Container, Sequence

import optuna
from optuna.distributions import BaseDistribution
from optuna.search_space import IntersectionSearchSpace
from optuna.trial import FrozenTrial, TrialState

from sweeper.search.asha import PAUSED


def is_paused(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.RUNNING and bool(trial.user_attrs.get(PAUSED))


def _reports(trial: FrozenTrial) -> dict[int, float]:
    """Finite values by epoch, for trials whose curve stands (a FAILed attempt's epochs are
    carried by its retry, so they count there)."""
    if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return {}
    return {step: v for step, v in trial.intermediate_values.items() if math.isfinite(v)}


def fidelity(trials: Sequence[FrozenTrial], n_min: int) -> int | None:
    """The highest epoch that at least `n_min` trials have reported, or None."""
    counts = Counter(step for t in trials for step in _reports(t))
    reached = [step for step, n in counts.items() if n >= n_min]
    return max(reached) if reached else None


def view(trials: Sequence[FrozenTrial], n_min: int) -> tuple[int | None, list[FrozenTrial]]:
    """(fidelity, the trials as the model sees them there)."""
    f = fidelity(trials, n_min)
    out = []
    for t in trials:
        value = _reports(t).get(f) if f is not None else None
        if value is not None:
            out.append(_as_complete(t, value))
        elif t.state == TrialState.RUNNING and not is_paused(t):
            out.append(t)  # training now (or being sampled): pending
        elif t.state in (TrialState.FAIL, TrialState.WAITING):
            out.append(t)
    return f, out


def _as_complete(t: FrozenTrial, value: float) -> FrozenTrial:
    return FrozenTrial(
        number=t.number, trial_id=t._trial_id, state=TrialState.COMPLETE, value=value, values=None,
        datetime_start=t.datetime_start, datetime_complete=t.datetime_complete or t.datetime_start,
        params=t.params, distributions=t.distributions, user_attrs=t.user_attrs,
        system_attrs=t.system_attrs, intermediate_values=t.intermediate_values)


class FidelityView(optuna.Study):
    """The study as the base sampler sees it: same storage and id, trials from `view`."""

    def __init__(self, study: optuna.Study, trials: list[FrozenTrial], fidelity: int | None):
        super().__init__(study_name=study.study_name, storage=study._storage,
                         sampler=study.sampler, pruner=study.pruner)
        self.view_trials, self.fidelity = trials, fidelity

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        out = [t for t in self.view_trials if states is None or t.state in states]
        return copy.deepcopy(out) if deepcopy else out

    def get_trials(self, deepcopy: bool = True,
                   states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy, states)


class MultiFidelitySampler(optuna.samplers.BaseSampler):
    """`base` (TPE or GP, its start-up set to `n_min`) fed a FidelityView of the study."""

    def __init__(self, base: optuna.samplers.BaseSampler, n_min: int):
        self.base, self.n_min = base, n_min
        self._view: tuple[int, FidelityView] | None = None  # (trial number, its view)

    def view_for(self, study: optuna.Study, trial: FrozenTrial) -> FidelityView:
        """One view per trial sampled, built when it is created (`before_trial`)."""
        if self._view is None or self._view[0] != trial.number:
            f, trials = view(study._storage.get_all_trials(study._study_id, deepcopy=False), self.n_min)
            self._view = (trial.number, FidelityView(study, trials, f))
        return self._view[1]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._view = None
        self._forget_search_space()
        self.base.before_trial(self.view_for(study, trial), trial)

    def _forget_search_space(self) -> None:
        """The base sampler's intersection search space is cached up to a trial number, for a
        study whose finished trials stay finished; in a view a trial can turn COMPLETE (reached
        the modelled epoch) after that cursor passed it, so it is computed afresh every ask."""
        for name, value in vars(self.base).items():
            if isinstance(value, IntersectionSearchSpace):
                setattr(self.base, name, IntersectionSearchSpace(include_pruned=value._include_pruned))

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(self.view_for(study, trial), trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.base.sample_relative(self.view_for(study, trial), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.base.sample_independent(self.view_for(study, trial), trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
