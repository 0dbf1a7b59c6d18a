"""Every epoch is resumable: the state a trial's worker leaves after each epoch, and which
failed trials are resumed from it instead of being trained again from epoch 0.

`resume.pt` in the trial's folder holds, after epoch k: the model, the optimizer, epoch k, every
RNG state (Python, NumPy, torch on the CPU and CUDA, and the train loader's generator, which
orders the data), the metrics of epochs 1..k and the weights the `value: best` rule has kept.
It is written atomically and only the latest is kept. With it, a resumed trial ends with the
metrics an uninterrupted one would have (exactly, on a CPU with num_workers: 0).

Whoever can write to a trials folder, the artifact store or the study could plant a state, so
a state is data only, checked before it is used:
- the file is a header line (JSON: study, the trial that wrote it, its epoch, a fingerprint of
  the configuration and the sha256 of the rest) and then tensors, lists, numbers and strings
  saved by torch, which `torch.load(weights_only=True)` reads without running any code;
- a source is a file under this study's trials folder or an id in the study's artifact store;
- a state of another study or trial, of another configuration, or truncated or corrupt, is
  not used: the trial trains from epoch 0 and its log says why. States written before this
  format (pickles) are never unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sweeper import artifacts, atomic_files
from sweeper.errors import StorageError, WorkerError
from sweeper.train.uploads import UNREACHABLE

if TYPE_CHECKING:
    import torch

RESUME = artifacts.RESUME
MAGIC = b"sweeper resume state 2\n"  # then one line of JSON (the header), then torch.save's bytes
ARTIFACT = "artifact:"  # a resume source in the artifact store: artifact:<id>
# a trial that failed for reasons outside itself is resumed; one that failed for its own
# (an exception, out of memory, a non-finite loss, a timeout) is not: it would fail again
# (and one that ran out of memory beside another trial is retried alone: sweep/sharing.py)
RESUMABLE = ("interrupted", "orchestrator lost", "worker killed by signal", "out of memory while sharing",
             UNREACHABLE)


def resumable(reason: str | None) -> bool:
    return bool(reason) and reason.startswith(RESUMABLE)


class Unusable(Exception):
    """A resume state that must not be used (the reason says why): the trial starts over."""


def rng_states(loader_generator: torch.Generator) -> dict[str, Any]:
    """Every RNG state as tensors, lists and numbers (what weights_only loading reads)."""
    import torch  # the worker's side; the orchestrator uses this module without torch

    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(words), gauss],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "loader": loader_generator.get_state()}


def restore_rng(states: dict[str, Any], loader_generator: torch.Generator) -> None:
    import torch  # the worker's side; the orchestrator uses this module without torch

    version, words, gauss = states["python"]
    random.setstate((version, tuple(words), gauss))
    numpy = states["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    loader_generator.set_state(states["loader"])


def identity(config) -> dict[str, Any]:
    """What a state records of the trial that wrote it, and a resumed trial checks."""
    return {"study": config.study, "trial": config.number, "fingerprint": config.training_fingerprint()}


def save(folder: Path, state: dict[str, Any], identity: dict[str, Any] | None = None) -> None:
    """Write resume.pt atomically (a kill mid-write leaves the previous epoch's state intact)."""
    import torch  # the worker's side; the orchestrator uses this module without torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    header = {**(identity or {}), "epoch": len(state.get("metrics", [])),
              "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
    with atomic_files.replacing(folder / RESUME) as tmp, open(tmp, "wb") as out:
        out.write(MAGIC + json.dumps(header).encode() + b"\n")
        out.write(payload)


def _in_store(source: str | None) -> str | None:
    """The artifact id of a resume source in the artifact store (artifact:<id>), else None."""
    return source[len(ARTIFACT):] if source and source.startswith(ARTIFACT) else None


def study_folder(config) -> Path:
    """trials/<study>: the folder of this study's trials on this machine (trial_dir's parent)."""
    return Path(config.trial_dir).resolve().parent


def in_folder(path: str | Path, folder: Path) -> bool:
    """Whether `path` (its links followed) is inside `folder`: a path read from the study may
    point anywhere."""
    return Path(path).resolve().is_relative_to(folder.resolve())


def load(config) -> dict[str, Any]:
    """The state `config.resume_from` names, checked against the trial it resumes; Unusable
    with the reason when it must not be used, WorkerError when the store is unreachable."""
    import torch  # the worker's side; the orchestrator uses this module without torch

    source = config.resume_from
    if (ident := _in_store(source)) is None:
        if not in_folder(source, study_folder(config)):
            raise Unusable(f"{source} is outside this study's trials folder {study_folder(config)}")
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise Unusable(f"cannot read it ({exc.strerror or exc})") from None
    else:
        if not artifacts.is_id(ident):
            raise Unusable(f"{ident!r} is not an artifact id sweeper made")
        try:
            data = artifacts.open_store(config.artifacts).get(ident)
        except StorageError as exc:  # unreachable, or not mounted here (yet): resumable
            raise WorkerError(f"{UNREACHABLE}: {exc}") from None
        if data is None:
            raise Unusable(f"it is no longer in the artifact store {artifacts.redact(config.artifacts)}")
    payload = _checked(data, config)
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise Unusable(f"its data cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None


def _checked(data: bytes, config) -> memoryview:
    """The payload of a state, once the header says it is whole and this trial's."""
    if not data.startswith(MAGIC):
        older = data.startswith(b"PK") or data.startswith(b"\x80")  # torch's zip, or a bare pickle
        raise Unusable("it was written by an older sweeper, whose states are pickles and are not "
                       "loaded (unpickling can run code)" if older else "it is not a sweeper resume state")
    end = data.find(b"\n", len(MAGIC))
    try:
        header = json.loads(data[len(MAGIC):end]) if end > 0 else None
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise Unusable("its header is missing or corrupt")
    payload = memoryview(data)[end + 1:]
    if len(payload) != header.get("bytes") or hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise Unusable(f"it is truncated or corrupt ({len(payload)} bytes, its header says {header.get('bytes')}; "
                       "sha256 differs)")
    expected = {"study": config.study, "trial": config.resume_trial, "fingerprint": config.training_fingerprint()}
    for key, value in expected.items():
        if header.get(key) != value:
            what = {"study": "another study", "trial": f"trial {header.get('trial')!r}, not trial {value}",
                    "fingerprint": "another configuration"}[key]
            raise Unusable(f"it is the state of {what}")
    return payload


def source_of(failed, folder: Path, store: "artifacts.ArtifactStore | None" = None) -> tuple[str, int] | None:
    """Where a failed attempt's retry resumes from, and the trial that wrote that state: its own
    latest state, else (it died before finishing an epoch of its own) the state it was resumed
    from (user attributes `resumed_from`, `resumed_from_trial`). With an artifact store, the
    store's copies, so that any machine can carry on; else files under `folder` (this study's
    trials folder) only."""
    attrs = failed.user_attrs
    earlier = attrs.get("resumed_from"), attrs.get("resumed_from_trial")
    if store is not None and attrs.get(artifacts.KEY):
        try:
            own = artifacts.artifact_id(attrs[artifacts.KEY], RESUME)
            if store.exists(own):
                return ARTIFACT + own, failed.number
            return earlier if (ident := _in_store(earlier[0])) and store.exists(ident) else None
        except StorageError:  # the store is down (the retry starts over rather than waiting), or an altered key
            return None
    own = Path(attrs["trial_dir"]) / RESUME if isinstance(attrs.get("trial_dir"), str) else None
    if own is not None and in_folder(own, folder) and own.is_file():
        return str(own), failed.number
    local = isinstance(earlier[0], str) and not _in_store(earlier[0])
    return earlier if local and in_folder(earlier[0], folder) and Path(earlier[0]).is_file() else None


def discard(config, store: "artifacts.ArtifactStore | None" = None) -> None:
    """A trial that ended for good needs no resume state, nor the one it was resumed from (in
    the store, removed in the background); nothing outside this study's trials folder goes."""
    stored = _in_store(config.resume_from)
    local = [Path(config.trial_dir) / RESUME] + ([Path(config.resume_from)] if config.resume_from and not stored else [])
    for path in local:
        if in_folder(path, study_folder(config)):
            path.unlink(missing_ok=True)
    if store is not None:
        for ident in ([artifacts.artifact_id(config.artifact_key, RESUME)] if config.artifact_key else []) + (
                [stored] if stored and artifacts.is_id(stored) else []):
            store.remove_later(ident)
