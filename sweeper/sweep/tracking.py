"""The orchestrator's side of TensorBoard and MLflow (opt-in, see spec/tracking.py).

TensorBoard: the worker writes a trial's scalars into its folder as each epoch ends
(train/tracking.py); when the trial ends, this adds its hparams (params and state) and final value
there, for the HParams dashboard. Only the orchestrator knows how a trial ended.

MLflow: one run per trial, nested under one run for the study (found by its `sweeper.study` tag,
so orchestrators on several machines share it), with the searched params, per-epoch metrics
(step = epoch), the final state and value, and checkpoint.pth while the trial keeps it
(`--keep-checkpoints`). The calls run in a background thread, in order, so a slow tracking server
never holds up the sweep. Logging never fails a trial or the sweep: after an error it stops (for
MLflow: for the rest of this sweep, not to wait on a dead server every epoch), noted in the
trial's log.txt and once on the console.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from sweeper import store
from sweeper.redaction import redact
from sweeper.sweep.checkpoints import CHECKPOINT
from sweeper.sweep.promotion import Waiting
from sweeper.sweep.worker_handle import Running
from sweeper.train.tracking import SCALARS

EXPERIMENT = "sweeper"  # the MLflow experiment, unless MLFLOW_EXPERIMENT_NAME names another
STUDY_TAG, TRIAL_TAG, STATE_TAG, REASON_TAG = "sweeper.study", "sweeper.trial", "sweeper.state", "sweeper.reason"
CHECKPOINT_TAG = "sweeper.checkpoint"  # kept: the run holds checkpoint.pth; dropped: it did
PARENT_TAG = "mlflow.parentRunId"  # what makes a run nested in MLflow
RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}
FINAL_VALUE = "value"  # the trial's value (a pruned trial's last one), in both trackers


@dataclass(frozen=True)
class Ended:
    """How a trial ended, as both trackers record it."""

    number: int
    trial_dir: str
    params: dict[str, Any]
    state: TrialState
    reason: str | None
    value: float | None  # its value; a pruned trial's last one
    epochs_run: float  # a part-epoch rung: 0.5
    started: float  # seconds since the epoch


class Tracking:
    def __init__(self, study: optuna.Study, storage_url: str, logging: tuple[str, ...], progress):
        self.progress = progress
        self.tensorboard = "tensorboard" in logging
        self.mlflow = MlflowRuns(study, storage_url) if "mlflow" in logging else None
        self.noted = False

    def event(self, run: Running, event: dict[str, Any]) -> None:
        """A worker's event: its MLflow run's epochs as they come."""
        if self.mlflow is not None:
            self.mlflow.event(run, event)
            self._note()

    def finished(self, run: Running, state: TrialState, reason: str | None, value: float | None,
                 kept: set[int] | None) -> None:
        """The trial has ended (`kept`: the trials that keep their checkpoint, after a completion)."""
        self._ended(Ended(run.trial.number, run.config.trial_dir, run.config.params, state, reason, value,
                          run.epochs_run, run.started), kept)

    def not_promoted(self, waiting: Waiting) -> None:
        """An asha trial that stayed paused is pruned at the end of the sweep."""
        t = waiting.trial
        self._ended(Ended(t.number, t.user_attrs.get("trial_dir", ""), t.params, TrialState.PRUNED,
                          f"not promoted at rung {waiting.epochs_run}", waiting.last_value, waiting.epochs_run,
                          t.datetime_start.timestamp() if t.datetime_start else time.time()), None)

    def _ended(self, ended: Ended, kept: set[int] | None) -> None:
        if self.tensorboard and Path(ended.trial_dir).is_dir():  # a paused trial's may be elsewhere
            try:
                write_hparams(ended)
            except Exception as exc:
                note(ended.trial_dir, f"TensorBoard hparams not written ({type(exc).__name__}: {exc})")
        if self.mlflow is not None:
            self.mlflow.finished(ended, kept)
            self._note()

    def close(self) -> None:
        if self.mlflow is not None:
            self.mlflow.close()
            self._note()

    def _note(self) -> None:
        if self.mlflow.error and not self.noted:
            self.noted = True
            self.progress.message(f"MLflow logging stopped: {self.mlflow.error}; the sweep goes on")


def write_hparams(ended: Ended) -> None:
    """The trial's session for TensorBoard's HParams dashboard, beside its scalars."""
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import Summary

    start = plugin_data_pb2.SessionStartInfo(start_time_secs=ended.started)
    for name, v in {**ended.params, "state": ended.state.name}.items():
        if isinstance(v, bool):
            start.hparams[name].bool_value = v
        elif isinstance(v, (int, float)):
            start.hparams[name].number_value = v
        else:
            start.hparams[name].string_value = str(v)
    # a pruned trial ended as the pruner chose, not by failing: its `state` hparam says which
    status = api_pb2.STATUS_FAILURE if ended.state == TrialState.FAIL else api_pb2.STATUS_SUCCESS
    end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    with SummaryWriter(ended.trial_dir) as writer:
        for tag, data in ((metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)),
                          (metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))):
            writer.file_writer.add_summary(Summary(value=[Summary.Value(
                tag=tag, metadata=metadata.create_summary_metadata(data))]))
        if ended.value is not None:
            writer.add_scalar(FINAL_VALUE, ended.value, int(ended.epochs_run))


def note(trial_dir: str, text: str) -> None:
    """A tracking problem, in the trial's log.txt; never raises."""
    try:
        with open(Path(trial_dir) / "log.txt", "a") as log:
            print(f"{redact(text)}; training goes on", file=log)
    except OSError:
        pass


class MlflowRuns:
    """The study's MLflow runs, written by one background thread."""

    def __init__(self, study: optuna.Study, storage_url: str):
        self.jobs: queue.Queue[tuple[str | None, Callable, tuple] | None] = queue.Queue()
        self.error: str | None = None  # the first error; nothing is sent after it
        self.runs: dict[int, str] = {}  # trial number -> its run id (the thread's own)
        self.seen: set[int] = set()  # trials whose run is asked for (the caller's own)
        self.thread = threading.Thread(target=self._work, name="mlflow", daemon=True)
        self.thread.start()
        self.jobs.put((None, self._open, (study, storage_url)))

    def event(self, run: Running, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "resumed":  # an earlier attempt's epochs this run lacks (not a paused trial's own)
            records = [r for r in event["records"] if r["epoch"] > run.epochs_run]
        elif kind == "epoch":
            records = [event]
        else:
            return
        self._submit(run.trial.number, run.config.trial_dir, run.config.params, self._epochs, records)

    def finished(self, ended: Ended, kept: set[int] | None) -> None:
        self._submit(ended.number, ended.trial_dir, ended.params, self._finished, ended, kept)

    def close(self, patience: float = 120.0) -> None:
        """Send what is queued (the study's run is marked finished), waiting at most `patience` s."""
        self.jobs.put((None, self._close, ()))
        self.jobs.put(None)
        self.thread.join(patience)
        if self.thread.is_alive() and self.error is None:
            self.error = f"still sending after {patience:g} s; the rest is not logged"

    def _submit(self, number: int, trial_dir: str, params: dict[str, Any], fn: Callable, *args) -> None:
        if number not in self.seen:  # its run first (found again for a promoted trial)
            self.seen.add(number)
            self.jobs.put((trial_dir, self._trial_run, (number, trial_dir, params)))
        self.jobs.put((trial_dir, fn, (number, *args)))

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            trial_dir, fn, args = job
            if self.error is not None:
                continue
            try:
                fn(*args)
            except Exception as exc:
                self.error = redact(f"{type(exc).__name__}: {exc}".splitlines()[0])[:300]
                if trial_dir:
                    note(trial_dir, f"MLflow logging stopped ({self.error})")

    # --- in the thread -------------------------------------------------------------------------

    def _open(self, study: optuna.Study, storage_url: str) -> None:
        from mlflow import MlflowClient

        self.client = client = MlflowClient()  # MLFLOW_TRACKING_URI, else MLflow's default here
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        # under a lock of the study's (not the budget's: a slow server must not hold up trials):
        # orchestrators starting together find one parent, never make two
        with store.study_lock(study._storage, storage_url, study.study_name, "mlflow"):
            found = client.get_experiment_by_name(name)
            self.experiment = found.experiment_id if found else client.create_experiment(name)
            parents = client.search_runs([self.experiment], f"tags.`{STUDY_TAG}` = '{study.study_name}'",
                                         order_by=["attributes.start_time ASC"], max_results=1)
            if parents:
                self.parent = parents[0].info.run_id
                client.update_run(self.parent, status="RUNNING")
            else:
                self.parent = client.create_run(self.experiment, run_name=study.study_name,
                                                tags={STUDY_TAG: study.study_name}).info.run_id

    def _close(self) -> None:
        self.client.set_terminated(self.parent)

    def _children(self, query: str):
        return self.client.search_runs([self.experiment], f"tags.`{PARENT_TAG}` = '{self.parent}' AND {query}")

    def _trial_run(self, number: int, trial_dir: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        found = self._children(f"tags.`{TRIAL_TAG}` = '{number}'")
        if found:  # an asha trial promoted after a pause: its run goes on
            self.runs[number] = found[0].info.run_id
            self.client.update_run(self.runs[number], status="RUNNING")
            return
        tags = {PARENT_TAG: self.parent, TRIAL_TAG: str(number), "sweeper.trial_dir": trial_dir}
        run_id = self.client.create_run(self.experiment, run_name=f"trial {number}", tags=tags).info.run_id
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self.runs[number] = run_id

    def _epochs(self, number: int, records: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(r[key]), now, r["epoch"]) for r in records for key in SCALARS]
        if metrics:
            self.client.log_batch(self.runs[number], metrics=metrics)

    def _finished(self, number: int, ended: Ended, kept: set[int] | None) -> None:
        from mlflow.entities import Metric, RunTag

        run_id = self.runs[number]
        tags = [RunTag(STATE_TAG, ended.state.name)] + ([RunTag(REASON_TAG, ended.reason[:5000])] if ended.reason else [])
        metrics = ([Metric(FINAL_VALUE, ended.value, int(time.time() * 1000), int(ended.epochs_run))]
                   if ended.value is not None else [])
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        if kept is not None:
            self._checkpoints(number, kept, Path(ended.trial_dir) / CHECKPOINT)
        self.client.set_terminated(run_id, RUN_STATUS[ended.state])

    def _checkpoints(self, number: int, kept: set[int], path: Path) -> None:
        """After a completion: its checkpoint if it keeps one; those of trials it pushed out go."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        if number in kept and path.is_file():
            try:
                self.client.log_artifact(self.runs[number], str(path))
                self.client.set_tag(self.runs[number], CHECKPOINT_TAG, "kept")
            except FileNotFoundError:
                pass  # a later completion has pushed it out since
        for child in self._children(f"tags.`{CHECKPOINT_TAG}` = 'kept'"):
            if int(child.data.tags[TRIAL_TAG]) not in kept:
                get_artifact_repository(child.info.artifact_uri).delete_artifacts(CHECKPOINT)
                self.client.set_tag(child.info.run_id, CHECKPOINT_TAG, "dropped")
