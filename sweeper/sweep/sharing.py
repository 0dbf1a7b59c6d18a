"""Trials that share a device: several slots on one GPU, or CPU slots sharing the host's memory.

An out-of-memory error while another trial trained on the same device may be the neighbour's
doing, and recording it as the configuration's own failure would bias the search against large
batches. Such a trial is failed and queued again, marked to train alone: its retry waits until
its device is free, keeps the device to itself (no other trial starts there meanwhile) and resumes
after its last finished epoch. Only an out-of-memory alone counts against the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from sweeper import store
from sweeper.sweep import recovery
from sweeper.sweep.worker_handle import Running, Slot

ALONE = "alone"  # user attribute of a retry that trains with no other trial on its device
SHARED_OOM = "out of memory while sharing"  # a resumable reason (train/resume.py)
OOM = "out of memory"


def device_of(slot: Slot) -> str:
    return slot.gpu if slot.gpu is not None else "cpu"


def label(device: str) -> str:
    return "the CPU host's memory" if device == "cpu" else f"GPU {device}"


@dataclass
class Held:
    """A claimed retry waiting for its device to be free."""

    device: str
    trial: optuna.Trial
    config: Any
    asked: float


class Sharing:
    def __init__(self) -> None:
        self.held: dict[str, Held] = {}  # by device: at most one retry waits for each

    @staticmethod
    def _on(device: str, running: dict[int, Running]) -> list[Running]:
        return [r for r in running.values() if device_of(r.slot) == device]

    def held_trials(self) -> list[optuna.Trial]:
        return [h.trial for h in self.held.values()]

    def fail_held(self, study: optuna.Study, reason: str, max_retry: int) -> None:
        """Interrupted (or a bug): retries held back for their device are failed and queued again
        (paused trials stay paused in the store: the next `sweeper run` promotes them)."""
        for trial in self.held_trials():
            frozen = store.retrying(lambda: study._storage.get_trial(trial._trial_id))
            store.retrying(lambda: recovery.fail_and_requeue(
                study, frozen, reason, max_retry, {ALONE: True} if trial.user_attrs.get(ALONE) else None, free=True))
        self.held.clear()

    def busy_for(self, trial: optuna.Trial, slot: Slot, running: dict[int, Running]) -> bool:
        """A trial that trains alone cannot start on this slot's device now."""
        return bool(trial.user_attrs.get(ALONE)) and bool(self._on(device_of(slot), running))

    def may_start(self, slot: Slot, running: dict[int, Running]) -> bool:
        """A free slot may start a trial unless its device is kept for (or by) a trial alone."""
        device = device_of(slot)
        return device not in self.held and not any(r.alone for r in self._on(device, running))

    def hold(self, slot: Slot, trial: optuna.Trial, config: Any, asked: float,
             running: dict[int, Running]) -> bool:
        """Keep a claimed alone-retry back while its slot's device is busy; True if held."""
        if not self.busy_for(trial, slot, running):
            return False
        self.held[device_of(slot)] = Held(device_of(slot), trial, config, asked)
        return True

    def release(self, slot: Slot, running: dict[int, Running]) -> Held | None:
        """The retry held for this slot's device, once that device has no trial training."""
        device = device_of(slot)
        if device not in self.held or self._on(device, running):
            return None
        return self.held.pop(device)

    def started(self, run: Running, running: dict[int, Running]) -> None:
        """After a launch: every trial on that device has now shared it."""
        here = self._on(device_of(run.slot), running)
        if len(here) > 1:
            for r in here:
                r.shared = True

    @staticmethod
    def outcome(run: Running, failed: bool, reason: str | None,
                retries_left: bool) -> tuple[str | None, dict[str, Any] | None]:
        """A trial's reason, and the attributes of its retry: a trial that ran alone keeps
        training alone; one that ran out of memory while sharing (another trial on its device,
        or its allocator capped at a share of the GPU) is retried alone."""
        if not failed:
            return reason, None
        alone = {ALONE: True} if run.alone else None
        if not reason or not reason.startswith(OOM):
            return reason, alone
        device = label(device_of(run.slot))
        if run.alone:
            return f"{reason} (alone on {device}, retried after an out-of-memory while sharing)", None
        if run.shared and retries_left:
            return f"{SHARED_OOM} {device} with other trials, retried alone: {reason}", {ALONE: True}
        if run.shared:
            return f"{reason} (while sharing {device}; no retries left)", None
        return reason, None
