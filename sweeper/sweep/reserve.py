"""A budget ends with an answer: the epochs the best unfinished trial still needs are kept back.

asha pauses the first arrivals at each rung, and an epoch budget can run out before anything
reached the last epoch: the sweep would end without a COMPLETE trial. So, before anything
else trains an epoch, the orchestrator asks `plan` whether that epoch is free:

- the candidate is the unfinished trial (training or paused, any orchestrator's) closest to its
  last epoch, the better value at that epoch first: the one that rose highest through the
  rungs, among those whose remaining epochs still fit (one that arrived better but less far
  may not); once the reserve has taken a trial, that trial stays the candidate. It is worth finishing while no trial is COMPLETE, or while it beats every COMPLETE
  trial at the epoch it reached and still fits in the budget;
- `room` = epochs left - what the candidate still needs - one epoch for every other trial
  training now (an epoch that has started cannot be stopped).

While `room` >= 1 the sweep goes on as usual. At `room` <= 0 nothing new starts, other trials
stop at their next epoch ("epoch budget kept for trial N"), and the candidate is promoted (if
paused) and trains to its last epoch: it is not paused, pruned or stopped by the budget (while
there is no answer yet, even when other orchestrators overshoot the budget). While no trial is COMPLETE the candidate is not pruned
either, so a sweep whose budget covers one trial's epochs ends with at least one COMPLETE trial.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper import store

from sweeper.search.asha import AshaPruner, reached, value_at
from sweeper.search.multi_fidelity import is_paused
from sweeper.sweep import epochs
from sweeper.sweep.recovery import RECHECK_OF
from sweeper.spec.sweep_spec import SweepSpec

FINISHED_BY_RESERVE = "finished_by_reserve"  # user attribute, why the reserve promoted or kept it going
KEPT = "the rest of the budget is kept to finish it"  # its value under the epoch budget (older studies: True)


@dataclass(frozen=True)
class Reserve:
    trial: int  # the candidate's number
    need: float  # epochs it still has to train (a trial paused at rung 0.5 needs epochs - 0.5)
    room: float  # epochs free for anything else (<= 0: only the candidate trains)


def _reached(t: FrozenTrial) -> tuple[float, float]:
    """The furthest epoch the trial reported (a part-epoch rung's too) and its value there."""
    last = reached(t)
    value = value_at(t, last) if last else None
    return (last, value) if value is not None else (0, float("-inf"))


def plan(trials: Sequence[FrozenTrial], budget: int, deciding: int | None = None,
         in_parallel: bool = False) -> Reserve | None:
    """The reserve now, or None when no unfinished trial is worth finishing. `deciding`: the
    trial whose next epoch is being decided (it is between epochs, so not counted as training);
    `in_parallel`: the budget is the candidate's own slot's (time), so others' epochs do not
    count against it."""
    unfinished = [t for t in trials if t.state == TrialState.RUNNING and "epochs" in t.user_attrs
                  and RECHECK_OF not in t.user_attrs]
    if not unfinished:
        return None
    # a trial the reserve took trains to its end whatever the others report: it stays the
    # candidate, or two trials in lockstep would each be kept in turn and both finished
    taken = [t for t in unfinished if t.user_attrs.get(FINISHED_BY_RESERVE)]
    trained = epochs.trained(trials)

    def room_beside(candidate: FrozenTrial) -> int:
        need = candidate.user_attrs["epochs"] - _reached(candidate)[0]
        training = sum(1 for t in unfinished if not is_paused(t) and t.number not in (candidate.number, deciding))
        return budget - trained - need - (0 if in_parallel else training)

    # the highest through the rungs that still fits: a trial that arrives better but less far
    # (its first epoch started while another was promoted) would need more than is left
    ordered = sorted(taken or unfinished, key=lambda t: (*_reached(t), -t.number), reverse=True)
    # none fits: the one closest to fitting (a better one that fits even less would let the
    # trial kept so far train on beside it, half an epoch over with a half-epoch first rung)
    candidate = next((t for t in ordered if room_beside(t) >= 0), max(ordered, key=room_beside))
    at, value = _reached(candidate)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete and not all(value > (value_at(t, at) or float("-inf")) for t in complete):
        return None
    need = candidate.user_attrs["epochs"] - at
    room = room_beside(candidate)
    if complete and room < 0:  # there is an answer: finish this one only inside the budget
        return None
    return Reserve(candidate.number, need, room)


def tightest(trials: Sequence[FrozenTrial], budget_epochs: int | None, seconds_left: float | None,
             seconds_per_epoch: float | None, deciding: int | None = None) -> Reserve | None:
    """The reserve under the epoch budget and under the time left (--timeout: as many epochs as
    one slot can still train at the seconds an epoch has taken; slots beside the candidate's
    run in parallel, so they are not counted against it), whichever leaves less room. Where
    the epoch budget keeps nothing (its candidate no longer fits), the time left cannot either."""
    plans = []
    if budget_epochs is not None:
        plans.append(plan(trials, budget_epochs, deciding))
        if plans[0] is None:
            return None
    if seconds_left is not None and seconds_per_epoch:
        by_time = epochs.trained(trials) + int(max(0.0, seconds_left) // seconds_per_epoch)
        plans.append(plan(trials, by_time, deciding, in_parallel=True))
    return min((p for p in plans if p is not None), key=lambda p: p.room, default=None)


def finished_by_reserve(trials: Sequence[FrozenTrial]) -> list[tuple[int, str]]:
    """(number, why) of each trial the reserve took."""
    return [(t.number, why if isinstance(why := t.user_attrs[FINISHED_BY_RESERVE], str) else KEPT)
            for t in trials if t.user_attrs.get(FINISHED_BY_RESERVE)]


def in_flight(trials: Sequence[FrozenTrial], deciding: int | None = None) -> float:
    """Epochs committed now: one per trial with a worker that has not reached its last epoch, and
    all that are left of a trial the reserve took (it trains to its end whatever the budget)."""
    def committed(t: FrozenTrial) -> float:
        done = reached(t)
        if (t.state != TrialState.RUNNING or is_paused(t) or t.number == deciding or RECHECK_OF in t.user_attrs
                or done >= t.user_attrs.get("epochs", done + 1)):
            return 0
        return t.user_attrs["epochs"] - done if t.user_attrs.get(FINISHED_BY_RESERVE) else 1
    return sum(map(committed, trials))


class Budget:
    """One orchestrator's view of what the sweep may still spend: search.budget.epochs (less a
    planned search.recheck) and the --timeout deadline, shared by every orchestrator through
    the store."""

    def __init__(self, spec: SweepSpec | None, study: optuna.Study, deadline: float | None):
        self.study, self.deadline = study, deadline
        self.epochs = spec.search_budget_epochs if spec is not None else None
        self.own_recheck_share = spec is not None and spec.search.recheck is not None
        self.active = spec is not None and (self.epochs is not None or deadline is not None)
        self.epoch_seconds: list[float] = []  # every epoch's, to turn the time left into epochs
        pruner, epochs_max = study.pruner if study is not None else None, spec.max_epochs if spec is not None else 1
        parts = pruner.part_rungs(epochs_max) if isinstance(pruner, AshaPruner) else ()
        self.first_step = parts[0] if parts and parts[0] < 1 else 1.0  # a new trial's first stop
        self.part_rungs = tuple(parts)

    def trials(self) -> list[FrozenTrial]:
        """The study's trials as the budget counts them: with search.recheck, the re-checks have
        their own share of the budget (spec/budget.py) and are left out."""
        trials = store.retrying(lambda: self.study.get_trials(deepcopy=False))
        if self.own_recheck_share:
            return [t for t in trials if RECHECK_OF not in t.user_attrs]
        return trials

    def epochs_spent(self, trials: Sequence[FrozenTrial], deciding: int | None = None, step: float = 1.0) -> bool:
        """Would `step` more epochs (to the trial's next stop: an epoch, or a part-epoch rung) go
        over search.budget.epochs? Every orchestrator's trials count, and so does the epoch each
        trial training now has started (it cannot be stopped part-way): with two workers, two
        epochs started at budget - 1 would end one over. `deciding`: the trial between stops
        whose next step is being decided."""
        spent = epochs.trained(trials) + in_flight(trials, deciding)
        return self.epochs is not None and spent + step > self.epochs + 1e-9

    def out(self, trials: Sequence[FrozenTrial]) -> bool:
        """No new trial or promotion: the deadline passed, or the first step (an epoch, or half
        of one with a half-epoch first rung) no longer fits."""
        return (self.deadline is not None and time.monotonic() >= self.deadline) \
            or self.epochs_spent(trials, step=self.first_step)

    def fits_promotion(self, trials: Sequence[FrozenTrial], paused_at: float) -> bool:
        """Does a trial paused at `paused_at` fit its next step (to an epoch's end, or a part-epoch
        rung)? A whole epoch does not fit the half one a half-epoch first rung leaves."""
        return not self.epochs_spent(trials, step=epochs.next_step(paused_at, self.part_rungs))

    def reserve(self, trials: Sequence[FrozenTrial], deciding: int | None = None) -> Reserve | None:
        if not self.active:
            return None
        seconds_left = self.deadline - time.monotonic() if self.deadline is not None else None
        per_epoch = statistics.median(self.epoch_seconds) if self.epoch_seconds else None
        return tightest(trials, self.epochs, seconds_left, per_epoch, deciding)
