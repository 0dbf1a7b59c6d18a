"""Every epoch is resumable: the state a trial's worker leaves after each epoch, and which
failed trials are resumed from it instead of being trained again from epoch 0.

`resume.pt` in the trial's folder holds, after epoch k: the model, the optimizer, epoch k, every
RNG state (Python, NumPy, torch on the CPU and CUDA, and the train loader's generator, which
orders the data), the metrics of epochs 1..k and the weights the `value: best` rule has kept.
It is written atomically and only the latest is kept. With it, a resumed trial ends with the
metrics an uninterrupted one would have (exactly, on a CPU with num_workers: 0).
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sweeper import artifacts
from sweeper.errors import WorkerError
from sweeper.train.uploads import UNREACHABLE

RESUME = artifacts.RESUME
ARTIFACT = "artifact:"  # a resume source in the artifact store: artifact:<id>
# a trial that failed for reasons outside itself is resumed; one that failed for its own
# (an exception, out of memory, a non-finite loss, a timeout) is not: it would fail again
# (and one that ran out of memory beside another trial is retried alone: sweep/sharing.py)
RESUMABLE = ("interrupted", "orchestrator lost", "worker killed by signal", "out of memory while sharing",
             UNREACHABLE)


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


def _in_store(source: str | None) -> str | None:
    """The artifact id of a resume source in the artifact store (artifact:<id>), else None."""
    return source[len(ARTIFACT):] if source and source.startswith(ARTIFACT) else None


def load(source: str, artifacts_url: str | None = None) -> dict[str, Any]:
    """A resume state from a file, or from the artifact store (artifact:<id>)."""
    # weights_only=False: the file holds RNG states (tuples, NumPy arrays) that sweeper wrote itself
    if (ident := _in_store(source)) is None:
        return torch.load(Path(source), map_location="cpu", weights_only=False)
    try:
        data = artifacts.open_store(artifacts_url).get(ident)
    except artifacts.Unreachable as exc:
        raise WorkerError(f"{UNREACHABLE}: {exc}") from None
    if data is None:
        raise WorkerError(f"resume state {ident} is no longer in the artifact store {artifacts.redact(artifacts_url)}")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def source_of(failed, store: "artifacts.ArtifactStore | None" = None) -> str | None:
    """Where a failed attempt's retry resumes from: its own latest state, else (it died before
    finishing an epoch of its own) the state it was resumed from (user attribute `resumed_from`).
    With an artifact store, the store's copies, so that any machine can carry on."""
    attrs = failed.user_attrs
    earlier = attrs.get("resumed_from")
    if store is not None and attrs.get(artifacts.KEY):
        own = artifacts.artifact_id(attrs[artifacts.KEY], RESUME)
        try:
            if store.exists(own):
                return ARTIFACT + own
            return earlier if (ident := _in_store(earlier)) and store.exists(ident) else None
        except artifacts.Unreachable:
            return None  # the store is down: the retry starts over rather than waiting for it
    if attrs.get("trial_dir") and (own := Path(attrs["trial_dir"]) / RESUME).is_file():
        return str(own)
    return earlier if earlier and not _in_store(earlier) and Path(earlier).is_file() else None


def discard(config, store: "artifacts.ArtifactStore | None" = None) -> None:
    """A trial that ended for good needs no resume state, nor the one it was resumed from (in
    the store, removed in the background)."""
    (Path(config.trial_dir) / RESUME).unlink(missing_ok=True)
    stored = _in_store(config.resume_from)
    if config.resume_from and stored is None:
        Path(config.resume_from).unlink(missing_ok=True)
    if store is not None:
        if config.artifact_key:
            store.remove_later(artifacts.artifact_id(config.artifact_key, RESUME))
        if stored:
            store.remove_later(stored)
