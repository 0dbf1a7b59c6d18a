"""Which trials keep their weights: checkpoint.pth stays with the best completed trials only."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from sweeper import store
from sweeper.sweep import recovery

CHECKPOINT = "checkpoint.pth"


def keep_best(study: optuna.Study, keep: int) -> None:
    """Only the best `keep` completed trials keep their checkpoint file."""
    done = store.retrying(lambda: study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    trained = [t for t in done if recovery.IMPORTED not in t.user_attrs]  # imported: no weights
    ranked = sorted(trained, key=lambda t: (-t.value, t.number))
    for t in ranked[keep:]:
        path = Path(t.user_attrs.get("trial_dir", "")) / CHECKPOINT
        if t.user_attrs.get("trial_dir") and path.is_file():
            path.unlink()
