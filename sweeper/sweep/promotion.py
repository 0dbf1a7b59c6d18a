"""asha's paused trials, shared by every orchestrator of the study.

A paused trial is RUNNING with user attribute `paused` in the store and no worker, heartbeat
or owner: its state is its resume file (or, with an artifact store, the store's copy). Any
orchestrator that can read that state may promote it, and promoting is a claim made under the
study's budget lock, like asking for a new trial: whoever flips `paused` first trains it. So a
paused trial outlives the orchestrator that paused it, and a free slot anywhere promotes it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper import artifacts, store
from sweeper.artifacts import ArtifactStore
from sweeper.errors import StorageError
from sweeper.redaction import redact
from sweeper.search.asha import PAUSED, AshaPruner, value_at
from sweeper.search.multi_fidelity import is_paused
from sweeper.spec.trial_config import TrialConfig
from sweeper.sweep import recovery, reserve
from sweeper.sweep.reserve import Budget, Reserve
from sweeper.train import resume


@dataclasses.dataclass(frozen=True)
class Waiting:
    """A paused trial as it waits: its number, the rung it reached and its value there."""

    trial: FrozenTrial
    epochs_run: float  # a part-epoch rung: 0.5
    last_value: float | None
    alone: bool
    config: TrialConfig | None = None  # once claimed: what its worker resumes with, here


class Promotions:
    def __init__(self, study: optuna.Study, storage_url: str, trials_root: Path, data_cache: Path,
                 artifact_store: ArtifactStore | None, heartbeat: float, asha: AshaPruner | None):
        self.study, self.storage_url, self.trials_root = study, storage_url, trials_root
        self.data_cache, self.artifact_store, self.heartbeat = data_cache, artifact_store, heartbeat
        self.asha = asha
        self.touched = False  # the last choose() tried a claim: the trials it was given are stale

    def _resumable_here(self, trial: FrozenTrial) -> bool:
        if self.artifact_store is not None and trial.user_attrs.get(artifacts.KEY):
            return True  # the worker stored its state before it exited
        state = Path(str(trial.user_attrs.get("trial_dir", "/nonexistent"))) / resume.RESUME
        return resume.in_folder(state, self._study_folder()) and state.is_file()

    def _study_folder(self) -> Path:
        return self.trials_root / self.study.study_name

    def waiting(self, trials: list[FrozenTrial], anywhere: bool = False) -> list[Waiting]:
        """The study's paused trials whose state this orchestrator can read (`anywhere`: all)."""
        out = []
        for t in trials:
            if is_paused(t) and recovery.RECHECK_OF not in t.user_attrs and (anywhere or self._resumable_here(t)):
                rung = t.user_attrs.get("pauses", [0])[-1]
                out.append(Waiting(t, rung, value_at(t, rung), bool(t.user_attrs.get("alone"))))
        return out

    def choose(self, trials: list[FrozenTrial], kept: Reserve | None, out_of_budget: bool,
               free: Callable[[FrozenTrial], bool], budget: Budget | None = None) -> Waiting | None:
        """The reserve's trial once only it may train; else a paused trial now in the top 1/eta
        at its rung (higher rungs first), while `budget` has room for its next step (asked again
        on the store's trials under the lock when a budget is set). Claimed: None when another
        orchestrator took it first, or took the room."""
        self.touched = False
        waiting = [w for w in self.waiting(trials) if free(w.trial)]
        if not waiting:
            return None
        if kept is not None and kept.room < 1:
            chosen = next((w for w in waiting if w.trial.number == kept.trial), None)
        elif out_of_budget:
            return None
        else:
            chosen = next((w for w in sorted(waiting, key=lambda w: (-w.epochs_run, w.trial.number))
                           if self.asha.promotable(w.trial.number, w.epochs_run, trials)
                           and (budget is None or budget.fits_promotion(trials, w.epochs_run))), None)
            again = None if budget is None or not budget.active or chosen is None else \
                (lambda: budget.fits_promotion(budget.trials(), chosen.epochs_run))  # no budget: no read
            return self._take(chosen, again)
        return self._take(chosen)

    def waits(self, number: int, epoch: float, epochs: int, trials: list[FrozenTrial]) -> bool:
        """Does trial `number`, at `epoch` of `epochs`, pause there (a rung it does not pass yet)?"""
        return bool(self.asha and epoch in self.asha.rungs(epochs) and not self.asha.promotable(number, epoch, trials))

    def last_chance(self, trials: list[FrozenTrial]) -> Waiting | None:
        """The sweep is ending (n_trials reached, grid done) with no COMPLETE trial: the paused
        trial highest through the rungs is finished rather than pruned (reserve.py); `why_last` says so."""
        if any(t.state == TrialState.COMPLETE for t in trials):
            return None
        kept = reserve.plan(trials, budget=0)
        chosen = next((w for w in self.waiting(trials) if kept and w.trial.number == kept.trial), None)
        return self._take(chosen)

    @staticmethod
    def why_last(chosen: Waiting, objective: str) -> str:
        value = f", {objective} {chosen.last_value:.4f}" if chosen.last_value is not None else ""
        return (f"finished rather than pruned: the sweep ended with no COMPLETE trial, and it is the "
                f"paused trial highest through the rungs (epoch {chosen.epochs_run}{value})")

    def _take(self, chosen: Waiting | None, admit: Callable[[], bool] | None = None) -> Waiting | None:
        """Claim the trial and read its configuration; a store that does not answer leaves it
        paused for later (or for another orchestrator)."""
        if chosen is None:
            return None
        self.touched = True
        if not self.claim(chosen.trial, admit):
            return None
        try:
            return dataclasses.replace(chosen, config=self.config(chosen.trial))
        except artifacts.Unreachable:
            store.retrying(lambda: self.study._storage.set_trial_user_attr(chosen.trial._trial_id, PAUSED, True))
            return None
        except StorageError as exc:  # its config.json is missing or was altered: it cannot go on
            live, reason = optuna.Trial(self.study, chosen.trial._trial_id), f"not promoted: {exc}"
            store.retrying(lambda: live.set_user_attr("reason", reason))
            store.retrying(lambda: self.study.tell(live, state=TrialState.FAIL))
            return None

    def claim(self, trial: FrozenTrial, admit: Callable[[], bool] | None = None) -> bool:
        """Take a paused trial for this orchestrator; False when another took it first (or, per
        `admit`, took the budget's room since this one looked)."""
        with store.budget_lock(self.study._storage, self.storage_url, self.study.study_name):
            now = store.retrying(lambda: self.study._storage.get_trial(trial._trial_id))
            if now.state != TrialState.RUNNING or not now.user_attrs.get(PAUSED) or (admit is not None and not admit()):
                return False
            # beaten first: never a moment when it is neither paused nor fresh (recovery.is_stale)
            store.retrying(lambda: recovery.beat(self.study, trial._trial_id, self.heartbeat))
            store.retrying(lambda: self.study._storage.set_trial_user_attr(trial._trial_id, PAUSED, False))
        return True

    def config(self, trial: FrozenTrial) -> TrialConfig:
        """The paused trial's configuration, resuming from its saved state, on this machine."""
        here = self.trials_root / self.study.study_name / str(trial.number)
        key = trial.user_attrs.get(artifacts.KEY)
        if self.artifact_store is not None and key:
            text = self.artifact_store.get(artifacts.artifact_id(key, "config.json"))
            if text is None:
                raise StorageError(f"trial {trial.number}'s config.json is missing from the artifact "
                                   f"store {redact(self.artifact_store.url)}")
            config = TrialConfig.from_json(text.decode())
            source = resume.ARTIFACT + artifacts.artifact_id(key, resume.RESUME)
            log = here / "log.txt"
            if not log.exists() and (earlier := self.artifact_store.get(artifacts.artifact_id(key, "log.txt"))):
                here.mkdir(parents=True, exist_ok=True)
                log.write_bytes(earlier)  # the log goes on where the machine that paused it left it
        else:
            folder = Path(trial.user_attrs["trial_dir"])
            config = TrialConfig.from_json((folder / "config.json").read_text())
            source, here = str(folder / resume.RESUME), folder
        url = self.artifact_store.url if self.artifact_store is not None and key else None
        return dataclasses.replace(config, trial_dir=str(here.resolve()), data_cache=str(self.data_cache),
                                   resume_from=source, resume_trial=trial.number, artifacts=url)  # the store as this machine reaches it

    def prune(self, trial: FrozenTrial, epochs_run: float) -> bool:
        """The sweep is over and the trial was never promoted: PRUNED, its state dropped."""
        if not self.claim(trial):
            return False
        reason = f"not promoted at rung {epochs_run}"
        live = optuna.Trial(self.study, trial._trial_id)
        store.retrying(lambda: live.set_user_attr("reason", reason))
        store.retrying(lambda: live.set_user_attr("epochs_run", epochs_run))
        store.retrying(lambda: self.study.tell(live, state=TrialState.PRUNED))
        folder = trial.user_attrs.get("trial_dir")
        if isinstance(folder, str) and resume.in_folder(Path(folder) / resume.RESUME, self._study_folder()):
            (Path(folder) / resume.RESUME).unlink(missing_ok=True)
        key = trial.user_attrs.get(artifacts.KEY)
        if self.artifact_store is not None and key:
            self.artifact_store.remove_later(artifacts.artifact_id(key, resume.RESUME))
        return True
