"""Where a trial's training stands, and how it is saved after each validation and restored.

A resume state (train/resume.py: resume.pt) is written after every validation: after an epoch,
and after a part-way one (train.eval_every < 1). Part-way, it also holds the loader's generator
as the epoch began, so that a resumed trial draws the same permutation and skips the batches it
had trained (data/loading.py: ShuffledBatches), which makes the resume exact there too.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sweeper.spec.trial_config import TrialConfig
from sweeper.train import regularizers, resume
from sweeper.train.device import Amp
from sweeper.train.evaluation import Chosen


@dataclass(frozen=True)
class Position:
    """Where training stands: `step` batches into epoch `epoch` (0-based; step 0: at its start),
    with what a part-way epoch needs to go on exactly: the loader's generator as the epoch began
    (it draws the epoch's permutation), the loss sum, images seen and seconds so far, and every
    validation record up to here (part-way ones too)."""

    epoch: int
    step: int = 0
    epoch_start_rng: torch.Tensor | None = None
    loss_sum: float = 0.0
    seen: int = 0
    seconds: float = 0.0
    evals: list = field(default_factory=list)


def restore(config: TrialConfig, model: nn.Module, optimizer: torch.optim.Optimizer, chosen: Chosen,
            amp: Amp, generator: torch.Generator, ema) -> tuple[list[dict[str, Any]], Position, str | None]:
    """Load an earlier attempt's resume state, if the trial has one; returns its epochs' metrics,
    where in an epoch it stopped, and (none of those) why the state was not used."""
    if not config.resume_from:
        return [], Position(0), None
    try:
        state = resume.load(config)
    except resume.Unusable as exc:
        return [], Position(0), f"Not resumed from {config.resume_from}: {exc}; training from epoch 0"
    model.load_state_dict(state["model"])
    regularizers.load_ema_state(ema, state.get("ema"))
    optimizer.load_state_dict(state["optimizer"])
    chosen.value, chosen.epoch, chosen.state = state["chosen"]
    amp.load_state_dict(state.get("scaler"))
    resume.restore_rng(state["rng"], generator)
    return state["metrics"], Position(**state["position"]), None


def save_resume_state(config: TrialConfig, model: nn.Module, optimizer: torch.optim.Optimizer, chosen: Chosen,
                      amp: Amp, done: list[dict[str, Any]], generator: torch.Generator, ema,
                      at: Position) -> float:
    """resume.pt after an epoch or a part-way validation (see resume.py); returns the seconds it took."""
    saving = time.perf_counter()
    resume.save(Path(config.trial_dir), {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "ema": regularizers.ema_state(ema),
                      "chosen": (chosen.value, chosen.epoch, chosen.state), "metrics": done,
                      "position": dataclasses.asdict(at),
                      "scaler": amp.state_dict(),
                      "rng": resume.rng_states(generator)}, resume.identity(config))
    return time.perf_counter() - saving
