"""The `prior` sampler: what the user already knows, mutations of it, and uniform samples.

PriorBand (Mallik et al. 2023) at its first rung draws half of its configurations from the
user's prior and half uniformly, the uniform share being what keeps a wrong prior from crowding
out the space. Our users' prior is a set of configurations (enqueue:, search.prior studies),
not one centre, so the prior share walks them instead:

- trials alternate prior / uniform draws by `uniform_share` (0.5: prior, uniform, prior, ...),
  deterministically by trial number, so a small pool gets its share exactly;
- a prior draw is the next known configuration (in a seeded order) that no trial of the study
  has tried yet; once all were tried, a mutation of one of them: each parameter resampled with
  probability `mutation_rate` (at least one), numbers from a normal of std `mutation_std`
  around it in the normalised range (log ranges on a log scale), categories to another choice
  (NePS's defaults), redrawn (up to 20 times) while a trial has tried that point already;
- a uniform draw is Optuna's RandomSampler.

Where this differs from NePS's PriorBand (neps/optimizers/priorband.py, read at v0.16.0), and why:
its prior draw samples around one default (a truncated normal of std 0.75 at "low" confidence),
ours returns the user's configurations as they are, since each was run as such by hand; its
mutations move its incumbent, ours the known configurations, since a screening pool is drawn
before its rungs say much; it forces no parameter to move (its neps_priorband variant does, as
we do, so that a mutation is never a repeat), truncates the normal where we clip it to the range,
draws prior/uniform at random where we alternate (a pool of 11 gets its 0.5 share exactly), and
lowers the uniform share above the first rung (1 / (1 + eta^rung)), where we sample only the pool.

Everything goes through `sample_independent`, Optuna's public per-parameter hook: the point of
a trial is chosen once, at its first parameter, and then handed out parameter by parameter. A
parameter the point does not hold (a conditional one that becomes active) is drawn uniformly.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState


def _normalised(value: Any, d: FloatDistribution | IntDistribution) -> float:
    if d.high == d.low:
        return 0.0
    if d.log:
        return (math.log(value) - math.log(d.low)) / (math.log(d.high) - math.log(d.low))
    return (value - d.low) / (d.high - d.low)


def _from_normalised(x: float, d: FloatDistribution | IntDistribution) -> float | int:
    x = min(1.0, max(0.0, x))
    value = math.exp(math.log(d.low) + x * (math.log(d.high) - math.log(d.low))) if d.log \
        else d.low + x * (d.high - d.low)
    if d.step is not None:
        value = d.low + round((value - d.low) / d.step) * d.step
    if isinstance(d, IntDistribution):
        value = int(round(value))
    return min(d.high, max(d.low, value))


def contains(d: BaseDistribution, value: Any) -> bool:
    if isinstance(d, CategoricalDistribution):
        return value in d.choices
    if isinstance(d, (FloatDistribution, IntDistribution)):
        return isinstance(value, (int, float)) and d.low <= value <= d.high
    return False


class PriorSampler(optuna.samplers.BaseSampler):
    def __init__(self, known: Sequence[dict[str, Any]] = (), uniform_share: float = 0.5,
                 mutation_rate: float = 0.5, mutation_std: float = 0.25, seed: int | None = None):
        for name, value in (("uniform_share", uniform_share), ("mutation_rate", mutation_rate)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if not isinstance(mutation_std, (int, float)) or isinstance(mutation_std, bool) or mutation_std <= 0:
            raise ValueError(f"mutation_std must be a number > 0, got {mutation_std!r}")
        self.known = [dict(k) for k in known]
        self.uniform_share, self.mutation_rate, self.mutation_std = uniform_share, mutation_rate, mutation_std
        self.seed = seed
        self._rng = np.random.RandomState(seed)
        self._order = list(self._rng.permutation(len(self.known)))
        self._uniform = optuna.samplers.RandomSampler(seed=seed)
        self._points: dict[int, dict[str, Any] | None] = {}  # trial number -> its point (None: uniform)

    def reseed_rng(self) -> None:
        self._rng = np.random.RandomState()
        self._uniform.reseed_rng()

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return {}

    def is_prior_draw(self, number: int) -> bool:
        """Trial `number`'s draw: prior (True) or uniform, so that the first n trials hold
        ceil(n x (1 - uniform_share)) prior draws."""
        share = 1.0 - self.uniform_share
        return math.ceil(round((number + 1) * share, 9)) > math.ceil(round(number * share, 9))

    def _point(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any] | None:
        if trial.number not in self._points:
            self._points[trial.number] = self._choose(study, trial) if self.known and self.is_prior_draw(trial.number) \
                else None
        return self._points[trial.number]

    def _choose(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        trials = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
        tried = [t.params for t in trials if t.state != TrialState.WAITING]
        for i in self._order:
            if not any(_same(self.known[i], p) for p in tried):
                return self.known[i]
        # a mutation that no trial has tried (in up to 20 draws), over the distributions seen
        distributions = {k: d for t in trials for k, d in t.distributions.items()}
        for _ in range(20):
            around = self.known[self._rng.randint(len(self.known))]
            moved = [k for k in around if k in distributions and contains(distributions[k], around[k])]
            forced = moved[self._rng.randint(len(moved))] if moved else None  # at least one moves
            point = {k: self._mutate(v, distributions[k], k == forced) if k in moved else v for k, v in around.items()}
            if not any(_same(point, p) for p in tried):
                break
        return point

    def sample_independent(self, study, trial, param_name: str, param_distribution: BaseDistribution) -> Any:
        point = self._point(study, trial)
        value = point.get(param_name) if point is not None else None
        if value is not None and contains(param_distribution, value):
            return value
        return self._uniform.sample_independent(study, trial, param_name, param_distribution)

    def _mutate(self, value: Any, d: BaseDistribution, force: bool = False) -> Any:
        if not force and self._rng.rand() >= self.mutation_rate:
            return value
        if isinstance(d, CategoricalDistribution):
            others = [c for c in d.choices if c != value]
            return others[self._rng.randint(len(others))] if others else value
        for _ in range(10):  # a number moved by less than its step stays: draw again
            moved = _from_normalised(_normalised(value, d) + self._rng.normal(0.0, self.mutation_std), d)
            if moved != value or not force:
                return moved
        return moved

    def before_trial(self, study, trial) -> None:
        self._uniform.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._points.pop(trial.number, None)
        self._uniform.after_trial(study, trial, state, values)


def _same(point: dict[str, Any], params: dict[str, Any]) -> bool:
    """Has a trial with `params` tried `point`? Only the parameters the trial has count: a point
    that moved `schedule` off step keeps a `milestones` the trial never asked for."""
    return bool(params) and all(params[k] == v for k, v in point.items() if k in params)
