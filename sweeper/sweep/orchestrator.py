"""Runs a sweep: a free slot claims a trial (scheduler.py) -> its worker starts
(worker_handle.py) -> its epochs are relayed to the store and the pruner -> the outcome is told.

The orchestrator is the only process that writes to the study store; workers speak JSON lines
over pipes (see train/worker.py), read by one thread per worker into a single queue. Several
orchestrators (on one machine or many) may share a study: they share its trial budget through
`store.budget_lock` and watch each other through heartbeats (recovery.py).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from sweeper import artifacts, store
from sweeper.artifacts import ArtifactStore
from sweeper.search.asha import PAUSED, AshaPruner
from sweeper.spec.sweep_spec import SweepSpec
from sweeper.spec.trial_config import TrialConfig
from sweeper.sweep import checkpoints, epochs, recovery, reserve, tracking, worker_handle
from sweeper.sweep.fork_server import Launcher
from sweeper.sweep.options import Options
from sweeper.sweep.progress import SweepProgress
from sweeper.sweep.promotion import Promotions, Waiting
from sweeper.sweep.scheduler import SweepSource, TrialSource, failing_if_unstarted
from sweeper.sweep.sharing import ALONE, Sharing
from sweeper.sweep.worker_handle import Running, Slot
from sweeper.train import resume

class Orchestrator:
    def __init__(self, spec: SweepSpec | None, study: optuna.Study, slots: list[Slot], data_cache: Path,
                 progress: SweepProgress, trials_root: Path = Path("trials"), storage_url: str = store.DEFAULT_STORAGE,
                 options: Options = Options(), source: "TrialSource | None" = None,
                 artifact_store: ArtifactStore | None = None, launcher: Launcher | None = None):
        self.spec, self.study, self.slots, self.launcher = spec, study, slots, launcher
        self.data_cache, self.progress, self.trials_root = data_cache, progress, trials_root
        self.storage_url, self.options = storage_url, options
        self.events: queue.Queue[tuple[int, dict[str, Any] | None]] = queue.Queue()
        self.running: dict[int, Running] = {}  # by slot index
        timeout = spec.search.timeout if spec is not None else None
        self.deadline = time.monotonic() + timeout if timeout else None
        self.interrupts = 0
        self.heartbeats = recovery.Heartbeats(study, options.heartbeat, options.max_retry)
        self.artifact_store = artifact_store  # trials' files go there too (artifacts.py)
        self.source = source or SweepSource(spec, study, data_cache, trials_root, storage_url,
                                            options.heartbeat, artifact_store)
        self.asha = study.pruner if isinstance(study.pruner, AshaPruner) and spec is not None else None
        # asha's paused trials are the study's, not this process's: any orchestrator promotes them
        self.promotions = Promotions(study, storage_url, trials_root, data_cache, artifact_store,
                                     options.heartbeat, self.asha)
        self.budget = reserve.Budget(spec, study, self.deadline)
        self.sharing = Sharing()  # trials on one device; out-of-memory retried alone
        self.tracking = tracking.Tracking(study, storage_url, options.logging, progress)

    def _out_of_budget(self, trials: list[optuna.trial.FrozenTrial]) -> bool:
        return bool(self.interrupts) or self.budget.out(trials)

    def _kept_for(self, trial: optuna.Trial, why: str = reserve.KEPT) -> None:
        if not trial.user_attrs.get(reserve.FINISHED_BY_RESERVE):
            store.retrying(lambda: trial.set_user_attr(reserve.FINISHED_BY_RESERVE, why))
            self.progress.message(f"trial {trial.number}: {why}")

    def _admits(self, trials: list[optuna.trial.FrozenTrial]) -> bool:
        """Budget for a new trial, beside what the reserve's trial needs (else only it trains now)."""
        return not self._out_of_budget(trials) and (
            (kept := self.budget.reserve(trials)) is None or kept.room >= self.budget.first_step)

    def _claim(self, trials: list[optuna.trial.FrozenTrial]) -> tuple[optuna.Trial, TrialConfig] | None:
        # asked again under the store's lock, on fresh trials: another orchestrator may have started one
        again = (lambda: self._admits(self.budget.trials())) if self.budget.active else None  # no budget: no read
        return self.source.claim(admit=again) if self._admits(trials) else None

    def _promotable(self, slot: Slot, trials: list[optuna.trial.FrozenTrial]) -> Waiting | None:
        """A paused trial to promote now (promotion.py); one that trains alone waits for a free device."""
        if not self.asha or self.interrupts:
            return None
        return self.promotions.choose(trials, self.budget.reserve(trials), self._out_of_budget(trials),
                                      lambda t: not self.sharing.busy_for(t, slot, self.running), self.budget)

    def _last_chance(self) -> Waiting | None:
        if not self.asha or self.interrupts or (chosen := self.promotions.last_chance(self.budget.trials())) is None:
            return None  # else the paused trial highest through the rungs is finished, saying why
        trial, why = optuna.Trial(self.study, chosen.trial._trial_id), Promotions.why_last(chosen, self.spec.search.objective)
        store.retrying(lambda: trial.set_user_attr("reason", why))  # shown by `sweeper trials` and `show`
        self._kept_for(trial, why)
        return chosen

    def _pause(self, run: Running) -> None:
        """The worker saved and exited at a rung; the trial waits, paused, for any orchestrator (promotion.py)."""
        store.retrying(lambda: run.trial.set_user_attr("segments", run.segments()))
        pauses = run.trial.user_attrs.get("pauses", []) + [run.epochs_run]
        store.retrying(lambda: run.trial.set_user_attr("pauses", pauses))
        store.retrying(lambda: run.trial.set_user_attr(PAUSED, True))  # now any orchestrator's
        self.progress.finished(run.trial.number, "PAUSED", run.last_value, f"paused at rung {run.epochs_run}")

    def _resume_paused(self, slot: Slot, waiting: Waiting) -> None:
        trial = optuna.Trial(self.study, waiting.trial._trial_id)
        config = dataclasses.replace(waiting.config, logging=self.options.logging)
        with failing_if_unstarted(self.study, trial):
            again = worker_handle.start(self.launcher, slot, self.slots, trial, config, self.events,
                                        fresh=False, epochs_run=waiting.epochs_run,
                                        last_value=waiting.last_value, alone=waiting.alone)
            for key, value in {"worker_pid": again.proc.pid, "slot": slot.index, "host": os.uname().nodename,
                               "trial_dir": config.trial_dir}.items():
                store.retrying(lambda: trial.set_user_attr(key, value))
        self.running[slot.index] = again
        self.sharing.started(again, self.running)
        kept = self.budget.reserve(self.budget.trials())
        if kept is not None and kept.trial == trial.number and kept.room < 1:
            self._kept_for(trial)
        self.progress.message(f"trial {trial.number}: promoted at rung {waiting.epochs_run}; resumed")
        self.progress.started(trial.number, slot.index, config.params, config.epochs)

    def _prune_paused(self) -> None:
        """The budget is spent: trials still paused were never promoted."""
        for w in self.promotions.waiting(self.budget.trials(), anywhere=True) if self.asha else []:
            if self.promotions.prune(w.trial, w.epochs_run):
                self.progress.finished(w.trial.number, "PRUNED", w.last_value, f"not promoted at rung {w.epochs_run}")
                self.tracking.not_promoted(w)

    # --- launching ---------------------------------------------------------------------------

    def _launch(self, slot: Slot, trial: optuna.Trial, config: TrialConfig, asked: float) -> None:
        stored = self.artifact_store is not None  # each attempt under a key of its own
        config = dataclasses.replace(config, artifacts=self.artifact_store.url if stored else None,
                                     artifact_key=artifacts.new_key() if stored else None, logging=self.options.logging)
        with failing_if_unstarted(self.study, trial):
            run = worker_handle.start(self.launcher, slot, self.slots, trial, config, self.events,
                                      asked=asked, prunable=recovery.RECHECK_OF not in trial.user_attrs,
                                      alone=bool(trial.user_attrs.get(ALONE)))
            attrs = {"trial_dir": config.trial_dir, "slot": slot.index, "epochs": config.epochs,
                     "worker_pid": run.proc.pid, "host": os.uname().nodename}
            # where its files are in the store; what its retry resumes from if it dies before an epoch
            attrs.update({k: v for k, v in ((artifacts.KEY, config.artifact_key), ("resumed_from", config.resume_from),
                                            ("resumed_from_trial", config.resume_trial)) if v is not None})
            for key, value in attrs.items():
                store.retrying(lambda: trial.set_user_attr(key, value))
        self.running[slot.index] = run
        self.sharing.started(run, self.running)
        self.progress.started(trial.number, slot.index, config.params, config.epochs)

    # --- relaying ----------------------------------------------------------------------------

    def _handle(self, run: Running, event: dict[str, Any]) -> None:
        kind = event["event"]
        run.last_event = time.monotonic()
        self.tracking.event(run, event)  # MLflow's epochs, before the run's own are updated
        if kind == "start":
            for key in ("device", "precision", "cuda_visible_devices", "gpu_sharing", "train_images"):  # classes: the study's
                store.retrying(lambda: run.trial.set_user_attr(key, event[key]))
            if event.get("loader_note"):
                self.progress.note_once(event["loader_note"])
        elif kind == "first_step":  # ask -> first training step: what a trial pays to start
            startup = round(time.monotonic() - run.asked, 3)
            store.retrying(lambda: run.trial.set_user_attr("startup_s", startup))
        elif kind == "resumed":
            # an earlier attempt's epochs (a paused trial's own are in the store already): the
            # pruner sees the whole curve
            carried = [r for r in event["records"] if r["epoch"] > run.epochs_run]
            for record in carried:
                store.retrying(lambda: run.trial.report(record[run.config.objective], record["epoch"]))
            if carried:
                run.epochs_run = carried[-1]["epoch"]
                run.last_value = carried[-1][run.config.objective]
                store.retrying(lambda: run.trial.set_user_attr(epochs.RESUMED_AFTER, run.epochs_run))
            self.progress.epoch(run.trial.number, run.epochs_run, run.last_value)
        elif kind == "epoch":
            run.resume_save_seconds.append(event.get("resume_save_s", 0.0))
            run.upload_seconds.append(event.get("upload_s", 0.0))
            run.record_stored(self.study, event.get("stored", []))
            value = event[run.config.objective]
            run.last_value, run.epochs_run = value, event["epoch"]
            store.retrying(lambda: run.trial.report(value, event["epoch"]))
            self.progress.epoch(run.trial.number, event["epoch"], value)
            self.budget.epoch_seconds.append(event["seconds"])
            # a trial that trained every epoch is complete, whatever the pruner would say
            stop = event["epoch"] < run.config.epochs and self._stops(run, event["epoch"])
            run.reply("stop" if stop or self.interrupts else "continue")
            run.last_epoch = time.monotonic()
            run.report_seconds.append(run.last_epoch - run.last_event)
        elif kind == "eval" and event.get("decide"):  # a part-epoch rung (asha.py): as after an epoch
            run.last_value, run.epochs_run = event[run.config.objective], event["epoch"]
            epochs.record_part(run.trial, run.epochs_run, run.last_value)
            self.progress.epoch(run.trial.number, run.epochs_run, run.last_value)
            run.reply("stop" if self._stops(run, run.epochs_run) or self.interrupts else "continue")
        elif kind == "stored":
            run.record_stored(self.study, event["files"])
        elif kind == "nonfinite":
            run.epochs_run = event["epoch"]
            run.outcome = (TrialState.PRUNED, "non-finite loss")
        elif kind == "value":
            run.value = (event["value"], event["epoch"])
        elif kind == "complete":
            run.outcome = (TrialState.COMPLETE, None)
        elif kind == "stopped" and run.outcome is None:
            run.outcome = (TrialState.PRUNED, "stopped")
        elif kind == "fail":
            run.outcome = (TrialState.FAIL, event["reason"])

    def _stops(self, run: Running, epoch: float) -> bool:
        """After a non-final epoch or at a part-epoch rung: does the trial stop (outcome set) or pause?"""
        if run.trial.user_attrs.get(reserve.FINISHED_BY_RESERVE):
            return False  # the reserve took it: it trains to its last epoch
        # one read decides all that follows; none where only an Optuna pruner decides (it reads its own)
        trials = self.budget.trials() if self.budget.active or self.asha else []
        kept = self.budget.reserve(trials, deciding=run.trial.number)
        mine = kept is not None and kept.trial == run.trial.number
        if mine and kept.room < 1:  # the reserve trains it to its last epoch
            self._kept_for(run.trial)
            return False
        # the one trial the budget can still finish is not pruned while there is no answer
        protected = mine and not any(t.state == TrialState.COMPLETE for t in trials)
        if run.prunable and not protected and store.retrying(run.trial.should_prune):
            run.outcome = (TrialState.PRUNED, f"pruned after epoch {epoch}")
        elif kept is not None and not mine and kept.room < 1:
            run.outcome = (TrialState.PRUNED, f"budget kept for trial {kept.trial}")
        elif self.budget.epochs_spent(trials, run.trial.number, epochs.next_step(epoch, run.config.decide_at)):
            run.outcome = (TrialState.PRUNED, "epoch budget spent")
        elif run.prunable and self.promotions.waits(run.trial.number, epoch, run.config.epochs, trials):
            run.pausing = True
        else:
            return False
        return True

    def _drop(self, run: Running) -> None:  # another orchestrator finished its trial: stop it, carry on
        if run.drop():
            self.progress.message(f"trial {run.trial.number}: finished by another orchestrator; its worker here is stopped")

    def _finish(self, run: Running) -> None:
        """The worker has exited: record the outcome it announced, or why it died."""
        code = run.proc.wait()
        if run.dropped:
            return
        if run.pausing and run.outcome == (TrialState.PRUNED, "stopped"):
            self._pause(run)
            return
        state, reason = run.outcome or (TrialState.FAIL, run.exit_reason(code))
        if state == TrialState.COMPLETE and run.value is None:
            state, reason = TrialState.FAIL, "worker reported no value"
        left = recovery.retries_left(run.trial.user_attrs, self.options.max_retry)
        reason, retry_attrs = self.sharing.outcome(run, state == TrialState.FAIL, reason, left)
        trial = run.trial
        attrs = {"epochs_run": run.epochs_run, "duration_s": round(time.time() - run.started, 2),
                 "segments": run.segments(), **({"reason": reason} if reason else {})}
        if state == TrialState.COMPLETE:
            attrs["value_epoch"] = run.value[1]
        if run.report_seconds:  # what the sweep machinery costs a trial (benchmarks/overhead.py)
            attrs["report_ms"] = round(1000 * sum(run.report_seconds) / len(run.report_seconds), 2)
            attrs["finish_s"] = round(time.monotonic() - run.last_epoch, 3)  # last epoch -> tell
            attrs["resume_save_s"] = round(sum(run.resume_save_seconds) / len(run.resume_save_seconds), 3)
            if self.artifact_store is not None:  # in the background, beside the next epoch
                attrs["upload_s"] = round(sum(run.upload_seconds) / len(run.upload_seconds), 3)
        for key, value in attrs.items():
            store.retrying(lambda: trial.set_user_attr(key, value))
        if state == TrialState.FAIL and resume.resumable(reason):  # its retry resumes it
            frozen = store.retrying(lambda: self.study._storage.get_trial(trial._trial_id))
            store.retrying(lambda: recovery.fail_and_requeue(self.study, frozen, reason,
                                                             self.options.max_retry, retry_attrs))
            if not left:  # no retry will resume it
                resume.discard(run.config, self.artifact_store)
        else:
            if state == TrialState.COMPLETE:
                store.retrying(lambda: self.study.tell(trial, run.value[0]))
            else:
                store.retrying(lambda: self.study.tell(trial, state=state))
            resume.discard(run.config, self.artifact_store)
        shown = None if state == TrialState.FAIL else run.value[0] if state == TrialState.COMPLETE else run.last_value
        self.progress.finished(trial.number, state.name, shown, reason)
        kept = (checkpoints.keep_best(self.study, self.options.keep_checkpoints, self.artifact_store, trial.number)
                if state == TrialState.COMPLETE else None)
        self.tracking.finished(run, state, reason, shown, kept)  # TensorBoard's hparams, MLflow's run

    # --- interruption, time-outs, heartbeats --------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            self.progress.message("stopping: no new trials; running trials are stopped and "
                                  "queued again (Ctrl-C again to stop at once)")
            for run in self.running.values():
                run.outcome = (TrialState.FAIL, "interrupted")
                run.signal(signal.SIGTERM)
        else:
            for run in self.running.values():
                run.outcome = (TrialState.FAIL, "interrupted")
                run.signal(signal.SIGKILL)

    def _check_timeouts(self) -> None:
        if (limit := self.options.trial_timeout) is None:
            return
        for run in self.running.values():
            if run.outcome is None and time.monotonic() - run.last_event > limit:
                run.outcome = (TrialState.FAIL, f"timeout: no epoch finished within {limit:g} s")
                run.signal(signal.SIGKILL)

    def _heartbeat(self) -> None:
        if not self.heartbeats.due():
            return
        held = self.sharing.held_trials()
        finished = self.heartbeats.beat([run.trial for run in self.running.values() if not run.dropped] + held)
        for run in [run for run in self.running.values() if run.trial in finished]:  # by another orchestrator
            self._drop(run)
        self.sharing.held = {d: h for d, h in self.sharing.held.items() if h.trial not in finished}
        mine = {run.trial.number for run in self.running.values()} | {t.number for t in held}
        for number in self.heartbeats.recover(mine):
            self.progress.message(f"trial {number}: its orchestrator is gone; recorded FAIL "
                                  "(orchestrator lost) and queued again")

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Run trials until the study holds n_trials finished ones (or the timeout passes)."""
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        self.launcher = self.launcher or Launcher()  # given: benchmarks/replay.py's simulated workers
        try:
            self._loop()
        except BaseException:  # a bug here: stop workers, leave nothing RUNNING
            for run in self.running.values():
                run.signal(signal.SIGKILL)
                run.outcome = run.outcome or (TrialState.FAIL, "orchestrator error")
                run.pausing = False
                self._finish(run)
            self.running.clear()
            self.sharing.fail_held(self.study, "orchestrator error", self.options.max_retry)
            raise
        finally:
            if self.artifact_store is not None:
                self.artifact_store.flush()  # removals queued in the background
            self.tracking.close()
            self.launcher.close()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _loop(self) -> None:
        waiting_noted = False
        while True:
            self._heartbeat()
            for slot in self.slots:
                if slot.index in self.running:
                    continue
                asked = time.monotonic()
                if not self.interrupts and (held := self.sharing.release(slot, self.running)):
                    self._launch(slot, held.trial, held.config, held.asked)
                elif not self.sharing.may_start(slot, self.running):
                    continue  # its device is kept for a trial that trains alone
                elif (promoted := self._promotable(slot, trials := self.budget.trials())) is not None:
                    self._resume_paused(slot, promoted)  # before any new trial
                elif (claimed := self._claim(self.budget.trials() if self.promotions.touched else trials)) is not None:
                    if not self.sharing.hold(slot, *claimed, asked, self.running):
                        self._launch(slot, *claimed, asked)
            if not self.running:
                if self.interrupts:
                    self.sharing.fail_held(self.study, "interrupted", self.options.max_retry)
                    return
                if self.deadline and time.monotonic() >= self.deadline:
                    if not self.source.running_elsewhere():
                        self._prune_paused()
                    return
                elsewhere = self.source.running_elsewhere()
                if not elsewhere and (last := self._last_chance()) is not None:
                    self._resume_paused(self.slots[0], last)
                    continue
                if not elsewhere:
                    self._prune_paused()  # nothing promotable is left: the sweep is over
                    return
                if not waiting_noted:  # the rest of the budget runs elsewhere
                    self.progress.message(f"waiting for {elsewhere} trial(s) running elsewhere")
                    waiting_noted = True
                time.sleep(min(self.options.heartbeat, 2.0))
                continue
            try:
                slot_index, event = self.events.get(timeout=1.0)
            except queue.Empty:
                slot_index, event = None, None
            if slot_index is not None:
                run = self.running[slot_index]
                try:
                    if event is None:
                        del self.running[slot_index]
                        self._finish(run)
                    elif not run.dropped:
                        self._handle(run, event)
                except UpdateFinishedTrialError:
                    self._drop(run)
            self._check_timeouts()
