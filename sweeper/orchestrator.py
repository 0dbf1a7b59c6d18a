"""Runs a sweep: ask Optuna -> spawn a worker per trial -> relay its epochs -> tell the outcome.

The orchestrator is the only process that writes to the study store; workers speak JSON lines
over pipes (see worker.py), read here by one thread per worker into a single queue.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeper import data as datasets
from sweeper import model as models
from sweeper.errors import SpecError, WorkerError
from sweeper.progress import SweepProgress
from sweeper.space import CategoricalParam
from sweeper.spec import SweepSpec
from sweeper.trial_config import TrialConfig, resolve

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass
class Slot:
    """A place a worker runs: a GPU id (pinned through CUDA_VISIBLE_DEVICES) or the CPU."""

    index: int
    gpu: str | None


@dataclass
class Running:
    trial: optuna.Trial
    config: TrialConfig
    slot: Slot
    proc: subprocess.Popen
    last_value: float | None = None
    epochs_run: int = 0
    outcome: tuple[TrialState, str | None] | None = None  # decided, not yet told
    started: float = field(default_factory=time.time)


def make_slots(workers: int | None, gpus: list[str] | None) -> list[Slot]:
    """`--workers K` slots, round-robin over `--gpus` (default: every visible GPU, else CPU)."""
    if gpus is None:
        import torch

        gpus = [str(i) for i in range(torch.cuda.device_count())]
    k = workers or max(1, len(gpus))
    return [Slot(i, gpus[i % len(gpus)] if gpus else None) for i in range(k)]


def max_image_size(spec: SweepSpec) -> int:
    return max(_values(spec, "image_size"))


def create_study(spec: SweepSpec, storage) -> optuna.Study:
    """Create or resume the study and queue the known configurations (each only once)."""
    study = optuna.create_study(storage=storage, study_name=spec.study, direction="maximize",
                                sampler=spec.sampler(), pruner=spec.pruner(), load_if_exists=True)
    study.set_user_attr("objective", spec.search.objective)
    for params in spec.enqueue:
        study.enqueue_trial(spec.space.to_optuna_params(params), skip_if_exists=True)
    return study


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


class Orchestrator:
    def __init__(self, spec: SweepSpec, study: optuna.Study, slots: list[Slot], data_cache: Path,
                 progress: SweepProgress, trials_root: Path = Path("trials")):
        self.spec, self.study, self.slots = spec, study, slots
        self.data_cache, self.progress, self.trials_root = data_cache, progress, trials_root
        self.events: queue.Queue[tuple[int, dict[str, Any] | None]] = queue.Queue()
        self.running: dict[int, Running] = {}  # by slot index
        self.deadline = time.monotonic() + spec.search.timeout if spec.search.timeout else None

    # --- launching ---------------------------------------------------------------------------

    def _worker_env(self, slot: Slot) -> dict[str, str]:
        env = dict(os.environ)
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""
            cpu_workers = sum(1 for s in self.slots if s.gpu is None)
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu_workers))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _launch(self, slot: Slot) -> None:
        trial = self.study.ask()
        try:
            self._spawn(trial, slot)
        except BaseException as exc:  # never leave a trial RUNNING behind
            trial.set_user_attr("reason", f"could not start: {type(exc).__name__}: {exc}")
            self.study.tell(trial, state=TrialState.FAIL)
            raise

    def _spawn(self, trial: optuna.Trial, slot: Slot) -> None:
        sampled = self.spec.space.suggest(trial)
        config = resolve(self.spec, trial.number, sampled, self.trials_root, self.data_cache)
        out = Path(config.trial_dir)
        if out.exists():  # left by an earlier study of the same name that was deleted
            shutil.rmtree(out)
        config.save()
        trial.set_user_attr("trial_dir", str(out))
        trial.set_user_attr("slot", slot.index)
        trial.set_user_attr("epochs", config.epochs)
        with open(out / "stderr.txt", "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sweeper.worker", str(out / "config.json")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                env=self._worker_env(slot), start_new_session=False)
        self.running[slot.index] = Running(trial, config, slot, proc)
        threading.Thread(target=self._read, args=(slot.index, proc), daemon=True).start()
        self.progress.started(trial.number, slot.index, sampled, config.epochs)

    def _read(self, slot: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                self.events.put((slot, json.loads(line)))
            except json.JSONDecodeError:
                continue
        self.events.put((slot, None))  # end of output: the worker has exited

    # --- relaying ----------------------------------------------------------------------------

    def _reply(self, run: Running, text: str) -> None:
        try:
            run.proc.stdin.write(text + "\n")
            run.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def _handle(self, run: Running, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            run.trial.set_user_attr("classes", event["classes"])
            run.trial.set_user_attr("device", event["device"])
            run.trial.set_user_attr("cuda_visible_devices", event["cuda_visible_devices"])
        elif kind == "epoch":
            value = event[self.spec.search.objective]
            run.last_value, run.epochs_run = value, event["epoch"]
            run.trial.report(value, event["epoch"])
            self.progress.epoch(run.trial.number, event["epoch"], value)
            prune = run.trial.should_prune()
            if prune:
                run.outcome = (TrialState.PRUNED, f"pruned after epoch {event['epoch']}")
            self._reply(run, "stop" if prune else "continue")
        elif kind == "nonfinite":
            run.epochs_run = event["epoch"]
            run.outcome = (TrialState.PRUNED, "non-finite loss")
        elif kind == "complete":
            run.outcome = (TrialState.COMPLETE, None)
        elif kind == "stopped" and run.outcome is None:
            run.outcome = (TrialState.PRUNED, "stopped")
        elif kind == "fail":
            run.outcome = (TrialState.FAIL, event["reason"])

    def _finish(self, run: Running) -> None:
        """The worker has exited: record the outcome it announced, or why it died."""
        code = run.proc.wait()
        state, reason = run.outcome or (TrialState.FAIL, _exit_reason(code, run.config))
        if state == TrialState.COMPLETE and run.last_value is None:
            state, reason = TrialState.FAIL, "worker reported no epoch"
        trial = run.trial
        trial.set_user_attr("epochs_run", run.epochs_run)
        trial.set_user_attr("duration_s", round(time.time() - run.started, 2))
        if reason:
            trial.set_user_attr("reason", reason)
        if state == TrialState.COMPLETE:
            self.study.tell(trial, run.last_value)
        else:
            self.study.tell(trial, state=state)
        self.progress.finished(trial.number, state.name,
                               run.last_value if state != TrialState.FAIL else None, reason)

    # --- the loop ----------------------------------------------------------------------------

    def _may_launch(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        return count_finished(self.study) + len(self.running) < self.spec.search.n_trials

    def run(self) -> None:
        """Run trials until the study holds n_trials finished ones (or the timeout passes)."""
        try:
            while True:
                for slot in self.slots:
                    if slot.index not in self.running and self._may_launch():
                        self._launch(slot)
                if not self.running:
                    return
                slot_index, event = self.events.get()
                run = self.running[slot_index]
                if event is None:
                    del self.running[slot_index]
                    self._finish(run)
                else:
                    self._handle(run, event)
        except BaseException as exc:  # Ctrl-C, or a bug here: stop workers, leave nothing RUNNING
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else \
                f"orchestrator error: {type(exc).__name__}"
            for run in self.running.values():
                run.proc.kill()
                run.proc.wait()
                run.outcome = (TrialState.FAIL, reason)
                self._finish(run)
            self.running.clear()
            raise


def _exit_reason(code: int, config: TrialConfig) -> str:
    if code < 0:
        return f"worker killed by signal {-code}"
    tail = ""
    err = Path(config.trial_dir) / "stderr.txt"
    if err.exists():
        lines = [line for line in err.read_text(errors="replace").splitlines() if line.strip()]
        tail = f": {lines[-1][:300]}" if lines else ""
    return f"worker exited with code {code}{tail}"


def prepare_data(spec: SweepSpec, trials_root: Path, progress=None) -> Path:
    """Decode the dataset once, at the largest image size any trial asks for."""
    return datasets.prepare(
        str(spec.data.root) if spec.data.root else None, spec.data.builtin, spec.data.val_fraction,
        max_image_size(spec), trials_root / ".cache", progress)


def _values(spec: SweepSpec, knob: str) -> list[Any]:
    """Every value a knob can take in this sweep."""
    if knob in spec.space.names:
        p = spec.space[knob]
        return list(p.choices) if isinstance(p, CategoricalParam) else [p.low, p.high]
    return [spec.fixed[knob]]


def prefetch_hub_weights(spec: SweepSpec) -> None:
    """Download hub weights once, here, so that trials neither race for them nor all fail later."""
    if True not in _values(spec, "pretrained"):
        return
    for name in _values(spec, "model"):
        print(f"fetching timm hub weights for {name} (once, before the sweep)", file=sys.stderr)
        try:
            models.create(name, 2, True)
        except WorkerError as exc:
            raise SpecError(spec.source, [("model.pretrained", str(exc))]) from None
