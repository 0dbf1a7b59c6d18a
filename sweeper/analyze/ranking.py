"""Configurations ranked by the mean of their runs over seeds (`sweeper recheck` adds runs).

A configuration is a completed trial that is not itself a re-check, together with the completed
re-check runs of it (user attr `recheck_of`). Ranked by the mean value over all its runs; `first`
ranks by the configuration's first score, as a study without re-checks always did.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from sweeper.sweep.recovery import RECHECK_OF

RANKINGS = ("mean", "first")


@dataclass(frozen=True)
class Configuration:
    first: FrozenTrial  # the trial that found it; its number names the configuration
    runs: tuple[FrozenTrial, ...]  # every completed run, the first included

    @property
    def values(self) -> list[float]:
        return [t.value for t in self.runs]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation over the runs (None for a single run)."""
        return statistics.stdev(self.values) if len(self.runs) > 1 else None

    @property
    def count(self) -> int:
        return len(self.runs)

    @property
    def lucky(self) -> bool:
        """The first score was more than one standard deviation above the mean of all runs."""
        # equal runs (std 0, up to rounding) are never lucky
        return self.std is not None and self.std > 1e-12 and self.first.value - self.mean > self.std

    def describe(self, objective: str) -> str:
        if self.count == 1:
            return f"{objective} {self.first.value:.4f} (1 run)"
        text = (f"{objective} mean {self.mean:.4f} ± {self.std:.4f} over {self.count} runs "
                f"(first {self.first.value:.4f})")
        if self.lucky:
            text += (f"; the first score was {(self.first.value - self.mean) / self.std:.1f} "
                     "standard deviations above the mean: a lucky run")
        return text


def configurations(trials: list[FrozenTrial], by: str = "mean") -> list[Configuration]:
    """Every completed configuration, best first (ties: the earlier trial)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    firsts = {t.number: t for t in complete if RECHECK_OF not in t.user_attrs}
    runs: dict[int, list[FrozenTrial]] = {n: [t] for n, t in firsts.items()}
    for t in complete:
        if t.user_attrs.get(RECHECK_OF) in runs:
            runs[t.user_attrs[RECHECK_OF]].append(t)
    configs = [Configuration(firsts[n], tuple(r)) for n, r in runs.items()]
    key = (lambda c: (-c.mean, c.first.number)) if by == "mean" else \
        (lambda c: (-c.first.value, c.first.number))
    return sorted(configs, key=key)


def has_rechecks(trials: list[FrozenTrial]) -> bool:
    return any(RECHECK_OF in t.user_attrs for t in trials)
