"""What a free slot trains next: a TrialSource hands out RUNNING trials with their configuration.

SweepSource asks the study's sampler while the trial budget (n_trials, shared by every
orchestrator through `store.budget_lock`) allows; recheck.RecheckSource hands out re-check runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Callable, Iterator, Protocol

import optuna
from optuna.trial import TrialState

from sweeper import store
from sweeper.redaction import redact
from sweeper.search.asha import PAUSED, AshaPruner
from sweeper.search.strategies import GridSampler
from sweeper.spec.sweep_spec import SweepSpec
from sweeper.spec.trial_config import TrialConfig, resolve
from sweeper.sweep import recovery
from sweeper.train import resume


@contextlib.contextmanager
def failing_if_unstarted(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Never leave a trial RUNNING behind when it could not be started."""
    try:
        yield
    except BaseException as exc:
        trial.set_user_attr("reason", redact(f"could not start: {type(exc).__name__}: {exc}"))
        study.tell(trial, state=TrialState.FAIL)
        raise


class TrialSource(Protocol):
    """What a free slot trains next."""

    def claim(self, admit: Callable[[], bool] | None = None) -> tuple[optuna.Trial, TrialConfig] | None:
        """A new RUNNING trial and its configuration, or None when there is no more work (or
        `admit`, asked under the store's lock, says the budget has no room)."""

    def running_elsewhere(self) -> int:
        """Trials of this work still training in other orchestrators (0: nothing to wait for)."""


class SweepSource:
    """New trials from the sampler while the study's budget (n_trials, shared by every
    orchestrator through `store.budget_lock`) allows."""

    def __init__(self, spec: SweepSpec, study: optuna.Study, data_cache: Path, trials_root: Path,
                 storage_url: str, heartbeat: float, artifact_store=None):
        self.spec, self.study, self.data_cache, self.trials_root = spec, study, data_cache, trials_root
        self.storage_url, self.heartbeat, self.artifact_store = storage_url, heartbeat, artifact_store

    @property
    def limit(self) -> int:
        """n_trials, or the screen pruner's pool where that is smaller (search/screen.py)."""
        pool = getattr(self.study.pruner, "pool", None)
        return min(self.spec.search.n_trials, pool) if pool else self.spec.search.n_trials

    def _counts(self) -> tuple[int, int, int]:
        """(finished, running, of those running: paused by asha)"""
        trials = store.retrying(lambda: self.study.get_trials(deepcopy=False))
        finished = sum(recovery.counts_toward_budget(t) for t in trials)
        running = [t for t in trials if t.state == TrialState.RUNNING and recovery.RECHECK_OF not in t.user_attrs]
        return finished, len(running), sum(bool(t.user_attrs.get(PAUSED)) for t in running)

    def claim(self, admit: Callable[[], bool] | None = None) -> tuple[optuna.Trial, TrialConfig] | None:
        """A new trial, when n_trials (or the screening pool) and `admit` (the epoch budget, read
        afresh under the lock that several orchestrators share) leave room for it."""
        with store.budget_lock(self.study._storage, self.storage_url, self.study.study_name):
            finished, running, _ = self._counts()
            if finished + running >= self.limit or (admit is not None and not admit()):
                return None
            sampler = self.study.sampler
            if isinstance(sampler, GridSampler) and not store.retrying(
                    lambda: sampler.has_unstarted_points(self.study)):
                return None
            trial = store.retrying(self.study.ask)
            recovery.beat(self.study, trial._trial_id, self.heartbeat)
        with failing_if_unstarted(self.study, trial):
            sampled = self.spec.space.suggest(trial)
            config = resolve(self.spec, trial.number, sampled, self.trials_root, self.data_cache)
            source, written_by = self._resume_source(trial) or (None, None)
            pruner = self.study.pruner  # asha and screen: the worker asks at part-epoch rungs (asha.py)
            decide_at = pruner.part_rungs(config.epochs) if isinstance(pruner, AshaPruner) else ()
            return trial, dataclasses.replace(config, resume_from=source, resume_trial=written_by,
                                              decide_at=decide_at)

    def _resume_source(self, trial: optuna.Trial) -> tuple[str, int] | None:
        """A retry of a trial that failed for reasons outside itself trains on after the last
        epoch that attempt finished, instead of from epoch 0 (train/resume.py)."""
        number = trial.user_attrs.get("retry_of")
        if number is None:
            return None
        earlier = {t.number: t for t in store.retrying(lambda: self.study.get_trials(deepcopy=False))}
        failed = earlier.get(number)
        while failed is not None and "trial_dir" not in failed.user_attrs and "retry_of" in failed.user_attrs:
            failed = earlier.get(failed.user_attrs["retry_of"])  # never started (held back): its own source
        if failed is None or not resume.resumable(failed.user_attrs.get("reason")):
            return None
        return resume.source_of(failed, (self.trials_root / self.study.study_name).resolve(), self.artifact_store)

    def running_elsewhere(self) -> int:
        """Trials training now (paused ones have no worker: whoever is free promotes them)."""
        finished, running, paused = self._counts()
        return 0 if finished >= self.limit else running - paused
