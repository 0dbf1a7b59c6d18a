"""Every epoch is resumable: the state a trial's worker leaves after each epoch, and which
failed trials are resumed from it instead of being trained again from epoch 0.

`resume.pt` in the trial's folder holds, after epoch k: the model, the optimizer, epoch k, every
RNG state (Python, NumPy, torch on the CPU and CUDA, and the train loader's generator, which
orders the data), the metrics of epochs 1..k and the weights the `value: best` rule has kept.
It is written atomically and only the latest is kept. With it, a resumed trial ends with the
metrics an uninterrupted one would have (exactly, on a CPU with num_workers: 0).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESUME = "resume.pt"
# a trial that failed for reasons outside itself is resumed; one that failed for its own
# (an exception, out of memory, a non-finite loss, a timeout) is not: it would fail again
# (and one that ran out of memory beside another trial is retried alone: sweep/sharing.py)
RESUMABLE = ("interrupted", "orchestrator lost", "worker killed by signal", "out of memory while sharing")


def resumable(reason: str | None) -> bool:
    return bool(reason) and reason.startswith(RESUMABLE)


def rng_states(loader_generator: torch.Generator) -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "loader": loader_generator.get_state()}


def restore_rng(states: dict[str, Any], loader_generator: torch.Generator) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    loader_generator.set_state(states["loader"])


def save(folder: Path, state: dict[str, Any]) -> None:
    path = folder / RESUME
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a kill mid-write leaves the previous epoch's state intact


def load(path: Path) -> dict[str, Any]:
    # weights_only=False: the file holds RNG states (tuples, NumPy arrays) that sweeper wrote itself
    return torch.load(path, map_location="cpu", weights_only=False)


def source_of(trial_dir: str | None) -> Path | None:
    """Where a failed attempt's retry resumes from: its own latest state, else (it died before
    finishing an epoch of its own) the state it was resumed from."""
    if not trial_dir:
        return None
    own = Path(trial_dir) / RESUME
    if own.is_file():
        return own
    config = Path(trial_dir) / "config.json"
    if config.is_file():
        earlier = json.loads(config.read_text()).get("resume_from")
        if earlier and Path(earlier).is_file():
            return Path(earlier)
    return None


def discard(trial_dir: str, resumed_from: str | None) -> None:
    """A trial that ended for good needs no resume state, nor the one it was resumed from."""
    (Path(trial_dir) / RESUME).unlink(missing_ok=True)
    if resumed_from:
        Path(resumed_from).unlink(missing_ok=True)
