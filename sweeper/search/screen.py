"""Screening: synchronous successive halving over a pool planned to fit the epoch budget.

asha decides as trials arrive: at 3-30 trainings' worth of epochs the first arrivals at a rung
are promoted on a nearly empty rung, and the best configuration can reach it when the budget is
spent (issue 27 §0). `screen` waits for full rungs instead (SEARCH.md's prior-seeded screening):

    stage 0: every pool member trains to rung 0 (min_resource epochs) and pauses
    stage k: once rung k-1 is full, its top 1/eta continue to rung k (min_resource * eta^k)
    last:    the top of the last rung trains to its final epoch; the answer is the best finished

The pool is the largest that fits: sum over stages of (trials in it) x (epochs it adds) must
stay within the budget less one epoch per further worker (an epoch that has started is not
stopped, so the reserve, reserve.py, would otherwise cut the last stage short). A rung is full
when its planned trials have reported there, or when no further trial can (failures, or a
budget or n_trials that ended the pool early). Pauses and promotions go through asha's machinery
(sweep/promotion.py), so paused trials, resumes and the reserve behave as with asha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from optuna.trial import FrozenTrial, TrialState

from sweeper.search.asha import PAUSED, AshaPruner, reached, value_at


@dataclass(frozen=True)
class Plan:
    rungs: tuple[float, ...]  # the epochs at which trials are compared (0.5: half-way through epoch 1)
    sizes: tuple[int, ...]  # trials that train to each rung, then to the final epoch
    epochs: int  # a trial's final epoch

    @property
    def pool(self) -> int:
        return self.sizes[0]

    def stage_epochs(self) -> list[tuple[int, int, int]]:
        """(trials, from epoch, to epoch) for every stage."""
        ends = [*self.rungs, self.epochs]
        return [(n, start, end) for n, start, end in zip(self.sizes, [0, *self.rungs], ends)]

    @property
    def cost(self) -> int:
        return sum(n * (end - start) for n, start, end in self.stage_epochs())

    def describe(self) -> str:
        stages = [f"{n} trial(s) epochs {start:g}->{end:g} ({n * (end - start):g})"
                  for n, start, end in self.stage_epochs()]
        return f"pool {self.pool}; " + "; ".join(stages) + f"; {self.cost:g} epochs in all"


def _sizes(pool: int, stages: int, eta: int) -> tuple[int, ...]:
    out = [pool]
    for _ in range(stages - 1):
        out.append(max(1, out[-1] // eta))
    return tuple(out)


def rungs(epochs: int, min_resource: float, eta: int) -> list[float]:
    """min_resource, then min_resource x eta^k rounded up to whole epochs, below `epochs`: a
    half-epoch first rung (0.5) is followed by whole ones (2, 5 for eta 3)."""
    out, k = [], 0
    while (r := min_resource if k == 0 else math.ceil(min_resource * eta**k)) < epochs:
        out.append(r)
        k += 1
    return out


def plan(epochs: int, min_resource: float, eta: int, budget: int | None, n_trials: int, workers: int = 1) -> Plan:
    """The stages for trials of `epochs` epochs: the largest pool (at most n_trials) whose
    stages fit `budget` less one epoch per worker beyond the first; without a budget, n_trials."""
    at = rungs(epochs, min_resource, eta)
    stages = len(at) + 1

    def fits(pool: int) -> bool:
        return budget is None or Plan(tuple(at), _sizes(pool, stages, eta), epochs).cost <= budget - (workers - 1)

    pool = 1
    while pool < n_trials and fits(pool + 1):
        pool += 1
    return Plan(tuple(at), _sizes(pool, stages, eta), epochs)


class ScreenPruner(AshaPruner):
    """asha's pause and promotion with full rungs and a planned pool (`plan`); the orchestrator
    sets `plan` once it knows the budget and the workers (setup.create_study)."""

    def __init__(self, min_resource: float = 1, reduction_factor: int = 3):
        super().__init__(min_resource, reduction_factor)
        self.plan: Plan | None = None
        # trials of the pool so far, as the scheduler counts them against it (setup.create_study
        # gives recovery's rule: a failed attempt queued again is replaced by its retry)
        self.claimed: Callable[[list[FrozenTrial]], int] = lambda trials: sum(
            t.state != TrialState.WAITING for t in trials)

    def rungs(self, epochs: int) -> list[float]:
        return list(self.plan.rungs) if self.plan is not None else rungs(epochs, self.min_resource,
                                                                           self.reduction_factor)

    @property
    def pool(self) -> int | None:
        return self.plan.pool if self.plan is not None else None

    def _quota(self, rung: int) -> int:
        """Trials that continue past `rung`."""
        k = self.plan.rungs.index(rung) if self.plan is not None and rung in self.plan.rungs else None
        if k is None:
            return 1
        return self.plan.sizes[k + 1]

    def _expected(self, rung: int) -> int:
        k = self.plan.rungs.index(rung) if self.plan is not None and rung in self.plan.rungs else 0
        return self.plan.sizes[k] if self.plan is not None else 1

    def full(self, rung: int, trials: list[FrozenTrial]) -> bool:
        """Every trial planned for `rung` has reported there, or none still can."""
        arrived = sum(1 for t in trials if value_at(t, rung) is not None)
        return arrived >= self._expected(rung) or not self._coming(rung, trials)

    def _coming(self, rung: int, trials: list[FrozenTrial]) -> bool:
        """Can another trial still report at `rung`? A trial training below it, a queued one,
        an unstarted pool member, or a paused trial that a lower rung promotes."""
        # a queued trial (a retry, an enqueued configuration) starts only while the pool has room
        room = self.plan is not None and self.claimed(trials) < self.plan.pool
        if room and rung == self.plan.rungs[0]:
            return True
        for t in trials:
            at = reached(t)
            if t.state == TrialState.WAITING:
                if room:
                    return True
                continue
            if t.state != TrialState.RUNNING or at >= rung:
                continue
            if not t.user_attrs.get(PAUSED):
                return True  # training now, or just asked
            if at in self.rungs(0) and self.promotable(t.number, at, trials):
                return True
        return False

    def promotable(self, number: int, rung: int, trials: list[FrozenTrial]) -> bool:
        """Once `rung` is full: is trial `number` among its top quota? (Ties: the earlier trial.)"""
        if not self.full(rung, trials):
            return False
        at_rung = sorted((-v, t.number) for t in trials if (v := value_at(t, rung)) is not None)
        return any(n == number for _, n in at_rung[: self._quota(rung)])

