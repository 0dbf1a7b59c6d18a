"""One trial's worker as the orchestrator sees it: where it runs, how it is started, and the
pipes it talks over (train/worker.py is the other end)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeper import artifacts, store
from sweeper.cpu_share import host_cores
from sweeper.gpus import GPU_ID_ENV
from sweeper.redaction import redact
from sweeper.spec.trial_config import TrialConfig
from sweeper.sweep.fork_server import ForkedWorker, Launcher

Events = queue.Queue  # of (slot index, event dict | None at the worker's end of output)


@dataclass
class Slot:
    """A place a worker runs: a GPU id (pinned through CUDA_VISIBLE_DEVICES) or the CPU."""

    index: int
    gpu: str | None  # the worker's CUDA_VISIBLE_DEVICES (None: the CPU)
    label: str = "CPU"
    identity: str | None = None  # the GPU's UUID, however the user named it (gpus.Gpu.identity)


def worker_env(slot: Slot, slots: list[Slot], alone: bool = False) -> dict[str, str]:
    """The worker's device (train/device.py), its share of a shared GPU and of the host's loaders."""
    env = dict(os.environ)
    if slot.gpu is not None:
        env["SWEEPER_DEVICE"] = "cuda"
        env["CUDA_VISIBLE_DEVICES"] = slot.gpu  # the user's own token (gpus.py)
        env[GPU_ID_ENV] = slot.identity or slot.gpu  # what it registers on the host (cpu_share.py)
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        sharing = 1 if alone else sum(1 for s in slots if s.gpu == slot.gpu)
        env["SWEEPER_GPU_SHARING"] = str(sharing)
    else:
        env["SWEEPER_DEVICE"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
        cpu_workers = sum(1 for s in slots if s.gpu is None)
        env["OMP_NUM_THREADS"] = str(max(1, host_cores() // cpu_workers))
    env["SWEEPER_HOST_SLOTS"] = str(len(slots))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Running:
    """A started worker and what it has told so far."""

    trial: optuna.Trial
    config: TrialConfig
    slot: Slot
    proc: subprocess.Popen | ForkedWorker
    last_value: float | None = None
    value: tuple[float, int] | None = None  # the trial's value and its epoch, from the worker
    epochs_run: float = 0  # a part-epoch rung: 0.5
    outcome: tuple[TrialState, str | None] | None = None  # decided, not yet told
    prunable: bool = True  # re-checks train every epoch
    asked: float = field(default_factory=time.monotonic)  # when the slot asked for this trial
    started: float = field(default_factory=time.time)
    last_event: float = field(default_factory=time.monotonic)
    last_epoch: float | None = None  # when the latest epoch's report arrived
    report_seconds: list[float] = field(default_factory=list)  # handling each epoch's report
    resume_save_seconds: list[float] = field(default_factory=list)  # the worker writing resume.pt
    upload_seconds: list[float] = field(default_factory=list)  # its uploads, beside the next epoch
    recorded: set[str] = field(default_factory=set)  # stored files whose artifact metas are recorded
    pausing: bool = False  # told to stop at an ASHA rung: the trial waits for promotion
    alone: bool = False  # a retry that keeps its device to itself (sharing.py)
    shared: bool = False  # another trial trained on its device while it ran
    dropped: bool = False  # its trial was finished by another orchestrator: its events are ignored

    def segments(self) -> list[list[float]]:
        """The stretches the trial's workers ran, this one's included (several when ASHA paused it)."""
        return self.trial.user_attrs.get("segments", []) + [[self.started, time.time()]]

    def record_stored(self, study: optuna.Study, files: list[str]) -> None:
        """Record files the worker stored as Optuna artifacts of the trial (not the resume state:
        transient, it is found by the trial's key)."""
        for name in files:
            if name != artifacts.RESUME and name not in self.recorded:
                key, value = artifacts.meta(self.config.artifact_key, name)
                store.retrying(lambda: study._storage.set_trial_system_attr(self.trial._trial_id, key, value))
                self.recorded.add(name)

    def reply(self, text: str) -> None:
        try:
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def drop(self) -> bool:
        """Its trial was finished by another orchestrator: kill the worker, ignore what it says.
        False if dropped already."""
        if self.dropped:
            return False
        self.dropped = True
        self.signal(signal.SIGKILL)
        return True

    def signal(self, sig: int) -> None:
        try:
            self.proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def exit_reason(self, code: int) -> str:
        """Why a worker that announced no outcome ended."""
        if code < 0:
            return f"worker killed by signal {-code}"
        tail = ""
        err = Path(self.config.trial_dir) / "stderr.txt"
        if err.exists():
            lines = [line for line in err.read_text(errors="replace").splitlines() if line.strip()]
            tail = f": {redact(lines[-1])[:300]}" if lines else ""
        return f"worker exited with code {code}{tail}"


def start(launcher: Launcher, slot: Slot, slots: list[Slot], trial: optuna.Trial, config: TrialConfig,
          events: Events, fresh: bool = True, **state: Any) -> Running:
    """Write the trial's config (in a fresh folder, unless it resumes its own), start its worker,
    and relay its events."""
    out = Path(config.trial_dir)
    if fresh and out.exists():  # left by an earlier study of the same name that was deleted
        shutil.rmtree(out)
    config.save()
    env = worker_env(slot, slots, state.get("alone", False))
    with open(out / "stderr.txt", "w") as err:
        # in a session of its own (see fork_server.Launcher): the orchestrator stops it on Ctrl-C
        proc = launcher.launch(out / "config.json", env, err)
    threading.Thread(target=_relay, args=(slot.index, proc, events), daemon=True).start()
    # capped at a share of its GPU, a trial shares it even when no other trial runs there yet
    return Running(trial, config, slot, proc, shared=env.get("SWEEPER_GPU_SHARING", "1") != "1", **state)


def _relay(slot: int, proc, events: Events) -> None:
    for line in proc.stdout:
        try:
            events.put((slot, json.loads(line)))
        except json.JSONDecodeError:
            continue
    events.put((slot, None))  # end of output: the worker has exited

