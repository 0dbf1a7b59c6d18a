"""Asynchronous successive halving (Li et al. 2020, ASHA) that pauses instead of stopping.

Rungs sit at min_resource * reduction_factor^k epochs, below max_resource. A trial that reaches
a rung goes on at once if its value there is in the top 1/reduction_factor of all values
recorded at that rung so far; otherwise its worker saves (every epoch is resumable, train/resume.py)
and exits, and the trial waits, still RUNNING. The top 1/eta grows as more trials reach a
rung, so a paused trial can become promotable later; the orchestrator resumes such a trial
before it asks the sampler for a new one. Trials still paused when the budget is spent are
recorded PRUNED ("not promoted at rung r"). Optuna's pruners can only stop a trial; this one
never prunes through Optuna (`prune` is always False): the orchestrator pauses and promotes.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

from sweeper.errors import quoted

PAUSED = "paused"  # user attribute: True while the trial waits at a rung (RUNNING, no worker)
PART_VALUES = "part_values"  # user attribute: values at part-epoch rungs, {"0.5": value} (Optuna's steps are whole)


def value_at(trial: FrozenTrial, rung: float) -> float | None:
    """The trial's value at a rung: a whole epoch's from its intermediate values, a part-epoch
    rung's (0.5) from PART_VALUES."""
    if rung == int(rung):
        return trial.intermediate_values.get(int(rung))
    return trial.user_attrs.get(PART_VALUES, {}).get(f"{rung:g}")


def curve(trial: FrozenTrial) -> dict[float, float]:
    """Every value the trial reported, by epoch, part-epoch rungs included."""
    parts = {float(k): v for k, v in trial.user_attrs.get(PART_VALUES, {}).items()}
    return dict(sorted({**trial.intermediate_values, **parts}.items()))


def reached(trial: FrozenTrial) -> float:
    """The furthest epoch the trial reported, part-epoch rungs included."""
    parts = [float(k) for k in trial.user_attrs.get(PART_VALUES, {})]
    return max([*trial.intermediate_values, *parts], default=0)


class AshaPruner(optuna.pruners.BasePruner):
    def __init__(self, min_resource: float = 1, reduction_factor: int = 3, max_resource: int | None = None):
        for name, value, least in (("min_resource", min_resource, 1), ("reduction_factor", reduction_factor, 2)):
            if value == 0.5 and name == "min_resource":
                continue  # half an epoch: the worker stops part-way there (decide_at)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}" + (" or 0.5 (half an epoch)" if name ==
                                 "min_resource" else "") + f", got {quoted(value)}")
        if max_resource is not None and (not isinstance(max_resource, int) or max_resource <= min_resource):
            raise ValueError(f"max_resource must be an integer > min_resource ({min_resource}), "
                             f"got {quoted(max_resource)}; leave it out to use train.epochs")
        self.min_resource, self.reduction_factor, self.max_resource = min_resource, reduction_factor, max_resource

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return False

    def part_rungs(self, epochs: int) -> tuple[float, ...]:
        """Rungs inside an epoch (0.5, 1.5, ...), where the worker validates, saves and waits
        for the orchestrator (TrialConfig.decide_at)."""
        return tuple(r for r in self.rungs(epochs) if r != int(r))

    def rungs(self, epochs: int) -> list[float]:
        """The epochs at which a trial of `epochs` epochs is compared (its last epoch is not one)."""
        top = min(self.max_resource or epochs, epochs)
        out, r = [], self.min_resource
        while r < top:
            out.append(r)
            r *= self.reduction_factor
        return out

    def promotable(self, number: int, rung: int, trials: list[FrozenTrial]) -> bool:
        """Is trial `number` in the top 1/eta of the values recorded at epoch `rung`? (Ties: the
        earlier trial first.)"""
        at_rung = sorted((-v, t.number) for t in trials if (v := value_at(t, rung)) is not None)
        top = at_rung[: len(at_rung) // self.reduction_factor]
        return any(n == number for _, n in top)
