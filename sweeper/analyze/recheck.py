"""`sweeper recheck`: train the best configurations again with new seeds, every epoch, no pruning.

Each re-check run is a trial of the study with the configuration's parameters and the user attrs
`recheck_of` (the configuration's first trial) and `recheck_seed` (1..S; the run trains with the
first trial's seed + that). The plan is worked out from the store each time, so an interrupted
re-check resumes where it stopped: only the (configuration, seed) pairs with no COMPLETE or
RUNNING run are trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper import store
from sweeper.analyze.ranking import configurations
from sweeper.artifacts import TrialFiles
from sweeper.errors import StorageError
from sweeper.spec.space import CategoricalParam
from sweeper.spec.trial_config import TrialConfig
from sweeper.sweep import recovery
from sweeper.sweep.recovery import IMPORTED

RECHECK_SEED = "recheck_seed"


@dataclass(frozen=True)
class Planned:
    first: FrozenTrial  # the configuration's first trial
    seed_index: int  # 1..S
    base: TrialConfig  # the configuration as trained (or as an imported run is rebuilt)


def _from_space(study: optuna.Study, first: FrozenTrial, trials_root: Path, progress) -> TrialConfig:
    """An imported configuration, rebuilt from the search space remembered by the study."""
    from sweeper.spec.sweep_spec import parse_spec
    from sweeper.spec.yaml_file import parse_yaml
    from sweeper.spec.trial_config import resolve
    from sweeper.sweep import setup as sweep_setup

    text = study.user_attrs.get("space_yaml")
    if text is None:
        raise StorageError(f"trial {first.number} was imported and study {study.study_name!r} "
                           "keeps no search space to rebuild it from; import it again with --space")
    source = study.user_attrs.get("space_source", "the study's search space")
    spec = parse_spec(parse_yaml(text, source), source, {"study": study.study_name,
                                                      "data_root": study.user_attrs.get("data_root")})
    values = {}
    for name, label in first.params.items():
        p = spec.space[name]
        values[name] = p.choices[p.labels.index(label)] if isinstance(p, CategoricalParam) else label
    cache = sweep_setup.prepare_data(spec, trials_root, progress)
    return resolve(spec, first.number, values, trials_root, cache)


def base_config(study: optuna.Study, first: FrozenTrial, trials_root: Path, files: TrialFiles,
                progress=None) -> TrialConfig:
    """The configuration `first` trained with, its decoded dataset present."""
    from sweeper.data import datasets

    if IMPORTED in first.user_attrs:
        return _from_space(study, first, trials_root, progress)
    text = files.read(first, "config.json")
    if text is None:
        raise StorageError(f"trial {first.number}'s config.json is missing from {files.where(first)}; "
                           "was trials/ moved? (pass --trials-dir to where it is now, or --artifacts)")
    # a new run: not resuming what `first` resumed from, nor writing into its artifacts
    config = dataclasses.replace(TrialConfig.from_json(text.decode()), resume_from=None,
                                 artifacts=None, artifact_key=None)
    if not Path(config.data_cache).is_file():  # caches are shared and may have been cleaned
        cache = datasets.prepare(datasets.Source.of(config), config.image_size, trials_root / ".cache",
                                 progress)
        config = dataclasses.replace(config, data_cache=str(cache))
    return config


def plan(study: optuna.Study, top: int, seeds: int, trials_root: Path, files: TrialFiles,
         progress=None) -> tuple[list[FrozenTrial], list[Planned]]:
    """The `top` configurations by first score, and the runs they still lack."""
    trials = store.retrying(lambda: study.get_trials(deepcopy=False))
    chosen = [c.first for c in configurations(trials, by="first")[:top]]
    if not chosen:
        raise StorageError(f"study {study.study_name!r} has no completed trial to re-check; "
                           "run `sweeper run` (or `sweeper import`) first")
    have = {(t.user_attrs.get(recovery.RECHECK_OF), t.user_attrs.get(RECHECK_SEED))
            for t in trials if t.state in (TrialState.COMPLETE, TrialState.RUNNING)}
    todo = []
    for first in chosen:
        missing = [k for k in range(1, seeds + 1) if (first.number, k) not in have]
        if missing:
            base = base_config(study, first, trials_root, files, progress)
            todo += [Planned(first, k, base) for k in missing]
    return chosen, todo


class RecheckSource:
    """Hands out the planned runs, one new RUNNING trial each (never a queued trial of `run`);
    a run another orchestrator has started since the plan was made is skipped."""

    def __init__(self, study: optuna.Study, planned: list[Planned], trials_root: Path, heartbeat: float,
                 storage_url: str):
        self.study, self.todo, self.trials_root, self.heartbeat = study, list(planned), trials_root, heartbeat
        self.storage_url = storage_url

    def _started(self) -> set[tuple[int, int]]:
        trials = store.retrying(lambda: self.study.get_trials(deepcopy=False))
        return {(t.user_attrs.get(recovery.RECHECK_OF), t.user_attrs.get(RECHECK_SEED))
                for t in trials if t.state in (TrialState.COMPLETE, TrialState.RUNNING)}

    def claim(self, admit: Callable[[], bool] | None = None) -> tuple[optuna.Trial, TrialConfig] | None:
        with store.budget_lock(self.study._storage, self.storage_url, self.study.study_name):
            started = self._started()
            self.todo = [p for p in self.todo if (p.first.number, p.seed_index) not in started]
            if not self.todo or (admit is not None and not admit()):
                return None
            p = self.todo.pop(0)
            template = optuna.trial.create_trial(
                state=TrialState.RUNNING, params=p.first.params, distributions=p.first.distributions,
                user_attrs={recovery.RECHECK_OF: p.first.number, RECHECK_SEED: p.seed_index})
            trial_id = store.retrying(lambda: self.study._storage.create_new_trial(
                self.study._study_id, template_trial=template))
            recovery.beat(self.study, trial_id, self.heartbeat)
        trial = optuna.Trial(self.study, trial_id)
        config = dataclasses.replace(
            p.base, number=trial.number, seed=p.base.seed + p.seed_index,
            trial_dir=str((self.trials_root / self.study.study_name / str(trial.number)).resolve()))
        return trial, config

    def running_elsewhere(self) -> int:
        return 0
