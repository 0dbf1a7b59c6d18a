"""Epochs as a budget and as a record: trained, saved by pruning and pausing, and retrained.

A retry that resumed after epoch k (train/resume.py) carries epochs 1..k over from the attempt it
replaces: they were trained once, by that attempt, and count there.
"""

from __future__ import annotations

import math

from optuna.trial import FrozenTrial, TrialState

from sweeper import store
from sweeper.search.asha import PART_VALUES, reached

RESUMED_AFTER = "resumed_after_epoch"


def trained_by(trial: FrozenTrial) -> float:
    """Whole epochs (less those carried over), and the part of an epoch trained past the last
    whole one when the trial stopped at a part-epoch rung (0.5)."""
    whole = max(trial.intermediate_values, default=0)
    return max(0, len(trial.intermediate_values) - trial.user_attrs.get(RESUMED_AFTER, 0)) + max(0, reached(trial) - whole)


def trained(trials: list[FrozenTrial]) -> float:
    return sum(trained_by(t) for t in trials)


def retrained(trials: list[FrozenTrial]) -> int:
    """Epochs a retry trained again that the attempt it replaces had finished already."""
    by_number = {t.number: t for t in trials}
    total = 0
    for t in trials:
        failed = by_number.get(t.user_attrs.get("retry_of"))
        if failed is not None and t.intermediate_values:
            carried = t.user_attrs.get(RESUMED_AFTER, 0)
            total += max(0, min(len(failed.intermediate_values), max(t.intermediate_values)) - carried)
    return total


def saved(trials: list[FrozenTrial]) -> int:
    """Epochs pruned and never-promoted trials did not train."""
    return sum(max(0, t.user_attrs["epochs"] - t.user_attrs.get("epochs_run", len(t.intermediate_values)))
               for t in trials if t.state == TrialState.PRUNED and "epochs" in t.user_attrs)


def summary(trials: list[FrozenTrial], budget: int | None = None) -> str:
    of = f" of a budget of {budget}" if budget else ""
    return (f"epochs: {trained(trials):g} trained{of}, {saved(trials)} saved by pruning and pausing, "
            f"{retrained(trials)} retrained")


def record_part(trial, at: float, value: float) -> None:
    """A part-epoch rung's value (Optuna's steps are whole epochs): in user attribute PART_VALUES."""
    parts = {**trial.user_attrs.get(PART_VALUES, {}), f"{at:g}": value}
    store.retrying(lambda: trial.set_user_attr(PART_VALUES, parts))


def next_step(at: float, decide_at) -> float:
    """Epochs from `at` to the trial's next stop: the next part-epoch rung inside the coming
    epoch (TrialConfig.decide_at), or the epoch's end."""
    end = math.floor(at) + 1
    return min([r for r in decide_at if at < r < end], default=end) - at
