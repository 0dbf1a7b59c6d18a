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
reported an epoch, sampling is random.

The base sampler sees this as a study of its own, built per ask through Optuna's public API (a
fresh in-memory study filled with `create_trial` copies): no private attribute of Optuna is
read or replaced. What that relies on is pinned by tests/search/test_multi_fidelity.py (a
fresh InMemoryStorage numbers trials from 0; WAITING trials hold back the intersection search
space's cursor and no model reads them; the liar and GP write through the trial passed in;
TPE's `constant_liar` defaults to True). The base keeps its intersection search space across
asks, and it only shrinks: a trial that leaves the view as the modelled epoch rises keeps
narrowing it, as a finished trial does in any Optuna study.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from typing import Any, Iterator, Sequence

import optuna
from optuna.distributions import BaseDistribution
from optuna.pruners import NopPruner
from optuna.storages import InMemoryStorage
from optuna.trial import FrozenTrial, TrialState, create_trial

from sweeper.search.asha import PAUSED, curve


def is_paused(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.RUNNING and bool(trial.user_attrs.get(PAUSED))


def _reports(trial: FrozenTrial) -> dict[float, float]:
    """Finite values by epoch, half-epoch rungs included, for trials whose curve stands (a
    FAILed attempt's epochs are carried by its retry, so they count there)."""
    if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return {}
    return {step: v for step, v in curve(trial).items() if math.isfinite(v)}


def fidelity(trials: Sequence[FrozenTrial], n_min: int) -> float | None:
    """The highest epoch that at least `n_min` trials have reported, or None."""
    counts = Counter(step for t in trials for step in _reports(t))
    reached = [step for step, n in counts.items() if n >= n_min]
    return max(reached) if reached else None


def view(trials: Sequence[FrozenTrial], n_min: int) -> tuple[float | None, list[FrozenTrial]]:
    """(fidelity, one new trial per trial number as the model sees it there), to add in order
    to a fresh study so that position, number and id coincide.

    - COMPLETE, valued at the fidelity: every trial that reached it;
    - RUNNING: training now and below it (TPE's liars, GP's pending points);
    - WAITING: out of the view now but may join it later (paused, or pruned or complete
      below it, or waiting): no model reads WAITING, and it holds back the cursor of Optuna's
      intersection search space, which would otherwise pass a trial before it turns COMPLETE;
    - FAIL: failed, and a placeholder for a number missing from `trials`.
    """
    f = fidelity(trials, n_min)
    by_number = {t.number: t for t in trials}
    return f, [_as_seen(by_number.get(n), f) for n in range(max(by_number, default=-1) + 1)]


def _as_seen(t: FrozenTrial | None, f: float | None) -> FrozenTrial:
    if t is None:
        return create_trial(state=TrialState.FAIL)
    value = _reports(t).get(f) if f is not None else None
    if value is not None:
        state = TrialState.COMPLETE
    elif t.state == TrialState.RUNNING and not is_paused(t):
        state = TrialState.RUNNING
    elif t.state == TrialState.FAIL:
        state = TrialState.FAIL
    else:
        state = TrialState.WAITING
    # system_attrs carry pending trials' relative params (read by the liar and GP) and fixed
    # params; user attrs and curves are read by no model, so they are not copied
    return create_trial(state=state, value=value, params=t.params, distributions=t.distributions,
                        system_attrs=t.system_attrs)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Optuna logs each in-memory study created at INFO; one per ask is noise (the CLI already
    logs at WARNING, so this only matters where sweeper is used as a library)."""
    verbosity = optuna.logging.get_verbosity()
    if verbosity >= optuna.logging.WARNING:
        yield
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


class MultiFidelitySampler(optuna.samplers.BaseSampler):
    """`base` (TPE or GP, its start-up set to `n_min`) sampling on the view of the study.

    The three sampling calls hand the base a fresh study holding the view, and that study's
    own copy of the trial sampled (its relative params are written there, by the same id);
    `before_trial`, `after_trial` and `reseed_rng` see the real study."""

    def __init__(self, base: optuna.samplers.BaseSampler, n_min: int):
        self.base, self.n_min = base, n_min
        self._view: tuple[int, float | None, optuna.Study] | None = None  # (trial number, fidelity, study)

    def view_study(self, study: optuna.Study, trial: FrozenTrial) -> tuple[float | None, optuna.Study]:
        """(fidelity, the view as a study), built once per trial sampled, on its first sampling
        call: the Trials sweeper builds to promote, resume or prune sample nothing, and build none."""
        if self._view is None or self._view[0] != trial.number:
            # Study.get_trials itself, not an override: Optuna's Hyperband hands samplers a
            # study of the trial's bracket, and BOHB models every bracket's trials at an epoch
            f, trials = view(optuna.Study.get_trials(study, deepcopy=False), self.n_min)
            with _quiet():
                seen = optuna.create_study(storage=InMemoryStorage(), directions=study.directions,
                                           sampler=self.base, pruner=NopPruner())
            seen.add_trials(trials)
            self._view = (trial.number, f, seen)
        return self._view[1], self._view[2]

    def _seen(self, study: optuna.Study, trial: FrozenTrial) -> tuple[optuna.Study, FrozenTrial]:
        _, seen = self.view_study(study, trial)
        own = seen.get_trials(deepcopy=False)[trial.number]
        assert own.number == trial.number, (own.number, trial.number)
        return seen, own

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._view = None
        self.base.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(*self._seen(study, trial))

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.base.sample_relative(*self._seen(study, trial), search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.base.sample_independent(*self._seen(study, trial), param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
