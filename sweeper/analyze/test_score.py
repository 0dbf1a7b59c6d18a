"""The test accuracy of the configuration a sweep returns, scored once, at the end.

The test split (data/datasets.py: test/ beside train/ and val/, `data.test`, `data.test_fraction`)
is never seen by pruning, sampling, promotion, ranking, `recheck`'s ranking or ensemble
selection. When `run` (or `recheck`) ends, the chosen configuration (the best by its mean over
seeds, as `best` ranks) has each of its runs' kept checkpoints scored on the test split through
exactly what validation ran (ensemble.probabilities: the same decode, transform, precision and
argmax), and the result is stored in the study's user attribute `test_score`, which `best`,
`trials`, `show` and the report read. Its val value beside it shows the selection's optimism.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import optuna

from sweeper import store
from sweeper.analyze.ranking import configurations
from sweeper.artifacts import TrialFiles

TEST_SCORE = "test_score"  # study user attribute


def score_chosen(study: optuna.Study, files: TrialFiles, trials_dir: Path) -> dict[str, Any] | None:
    """Score the chosen configuration's runs on the test split and store the result; None (and
    nothing stored) when the study has no completed configuration or its data no test split."""
    from sweeper.data import datasets

    ranked = configurations(study.get_trials(deepcopy=False))
    if not ranked:
        return None
    chosen = ranked[0]
    if _test_images_here(chosen.first, files) == 0:
        return None  # known without torch: a sweep with no test split never loads the scorer
    import torch  # deferred, with the scoring: the report and `best` only read the result

    from sweeper.analyze import ensemble as ens

    found = [ens.member_of(t, files) for t in chosen.runs]
    members = [m for m in found if not isinstance(m, str)]
    if not members:
        result = {"trial": chosen.first.number, "val": chosen.mean, "test": None,
                  "why": "; ".join(found) + ": no kept checkpoint to score"}
    else:
        test = datasets.load(ens.dataset_cache(members[0], trials_dir)).test
        if not len(test.labels):
            return None
        labels = torch.from_numpy(test.labels)
        runs = {str(m.trial.number): (ens.probabilities(m, test.images).argmax(dim=1) == labels).float().mean().item()
                for m in members}
        result = {"trial": chosen.first.number, "val": chosen.mean, "test": statistics.fmean(runs.values()),
                  "runs": runs, "test_images": len(test.labels)}
    store.retrying(lambda: study.set_user_attr(TEST_SCORE, result))
    return result


def _test_images_here(trial, files: TrialFiles) -> int | None:
    """The test split's size from the dataset cache the trial trained on, when it is on this
    machine (its header only); None when that cannot be told here."""
    from sweeper.data import datasets
    from sweeper.spec.trial_config import TrialConfig

    raw = files.read(trial, "config.json")
    if raw is None:
        return None
    cache = Path(TrialConfig.from_json(raw.decode()).data_cache)
    try:
        return len(datasets.load(cache).test.labels) if cache.is_file() else None
    except Exception:  # noqa: BLE001 (a damaged cache: the scorer says what is wrong with it)
        return None


def stored(study: optuna.Study) -> dict[str, Any] | None:
    return study.user_attrs.get(TEST_SCORE)


def describe(result: dict[str, Any] | None, objective: str = "val_acc") -> str | None:
    """One line for a terminal or the report; None without a test split."""
    if result is None:
        return None
    if result.get("test") is None:
        return f"test accuracy of the chosen configuration (trial {result['trial']}): not scored ({result['why']})"
    runs = result["runs"]
    over = f", mean of {len(runs)} runs" if len(runs) > 1 else ""
    return (f"test accuracy of the chosen configuration (trial {result['trial']}): {result['test']:.4f} "
            f"on {result['test_images']} test images{over}; its {objective} {result['val']:.4f} "
            f"(gap {result['val'] - result['test']:+.4f}: the selection's optimism)")
