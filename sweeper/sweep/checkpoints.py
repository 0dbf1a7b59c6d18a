"""Which trials keep their weights: checkpoint.pth stays with the best completed trials only."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from sweeper import artifacts, store
from sweeper.sweep import recovery

CHECKPOINT = "checkpoint.pth"


def keep_best(study: optuna.Study, keep: int, artifact_store: artifacts.ArtifactStore | None = None,
              completed: int | None = None) -> set[int]:
    """Only the best `keep` completed trials keep their checkpoint file, and its copy in the
    artifact store (the copy's artifact meta stays: Optuna cannot remove one); returns their numbers."""
    done = store.retrying(lambda: study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    trained = [t for t in done if recovery.IMPORTED not in t.user_attrs]  # imported: no weights
    ranked = sorted(trained, key=lambda t: (-t.value, t.number))
    for i, t in enumerate(ranked[keep:]):
        path = Path(t.user_attrs.get("trial_dir", "")) / CHECKPOINT
        if t.user_attrs.get("trial_dir") and path.is_file():
            path.unlink()
        stored = artifacts.recorded(t.system_attrs).get(CHECKPOINT)
        # a completion drops the trial it pushes out of the top `keep` (two, for orchestrators
        # completing at once) or itself: the store is not asked about every trial each time
        if artifact_store is not None and stored and (i < 2 or t.number == completed):
            artifact_store.remove_later(stored)
    return {t.number for t in ranked[:keep]}
