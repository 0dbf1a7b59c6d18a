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
        self.held: Held | None = None

    @staticmethod
    def _on(device: str, running: dict[int, Running]) -> list[Running]:
        return [r for r in running.values() if device_of(r.slot) == device]

    def may_start(self, slot: Slot, running: dict[int, Running]) -> bool:
        """A free slot may start a trial unless its device is kept for (or by) a trial alone."""
        device = device_of(slot)
        held_here = self.held is not None and self.held.device == device
        return not held_here and not any(r.alone for r in self._on(device, running))

    def hold(self, slot: Slot, trial: optuna.Trial, config: Any, asked: float,
             running: dict[int, Running]) -> bool:
        """Keep a claimed alone-retry back while its slot's device is busy; True if held."""
        device = device_of(slot)
        if not trial.user_attrs.get(ALONE) or not self._on(device, running):
            return False
        self.held = Held(device, trial, config, asked)
        return True

    def release(self, slot: Slot, running: dict[int, Running]) -> Held | None:
        """The held retry, once its device has no trial training."""
        held = self.held
        if held is None or held.device != device_of(slot) or self._on(held.device, running):
            return None
        self.held = None
        return held

    def started(self, run: Running, running: dict[int, Running]) -> None:
        """After a launch: every trial on that device has now shared it."""
        here = self._on(device_of(run.slot), running)
        if len(here) > 1:
            for r in here:
                r.shared = True

    @staticmethod
    def outcome(run: Running, failed: bool, reason: str | None) -> tuple[str | None, dict[str, Any] | None]:
        """A trial's reason, and when it failed for lack of memory beside another trial, the
        attributes of its retry alone."""
        if not failed or not reason or not reason.startswith(OOM):
            return reason, None
        device = label(device_of(run.slot))
        if run.alone:
            return f"{reason} (alone on {device}, retried after an out-of-memory while sharing)", None
        if run.shared:
            return f"{SHARED_OOM} {device} with other trials, retried alone: {reason}", {ALONE: True}
        return reason, None
