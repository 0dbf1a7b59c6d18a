"""timm's model names and input normalisation, without importing timm in the orchestrator.

Importing timm imports torch and torchvision (about 3 s and 400 MB). The orchestrator needs only
two facts from it, the registered model names (to refuse a mistyped one) and each model's
pretrained mean and std (a trial's normalisation), so those are read from timm once per timm
version and cached in ~/.cache/sweeper (XDG_CACHE_HOME); the workers import timm themselves.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from functools import cache
from pathlib import Path

from sweeper import atomic_files

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _cache_file() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sweeper"
    return base / f"timm-{importlib.metadata.version('timm')}.json"


def _from_timm() -> dict:
    import timm

    norm = {}
    for name in timm.list_models() + timm.list_pretrained():  # names, and names with a weight tag
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
        if cfg is not None:
            norm[name] = [[float(m) for m in cfg.mean], [float(s) for s in cfg.std]]
    return {"names": timm.list_models(), "normalization": norm}


@cache
def catalog() -> dict:
    path = _cache_file()
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not yet on this machine for this timm, or damaged
        pass
    found = _from_timm()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_files.write_bytes(path, json.dumps(found).encode())
    except OSError:  # a read-only home: asked again next time
        pass
    return found


def model_names() -> list[str]:
    return catalog()["names"]


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean and std of the model's timm pretrained config; None when it has none."""
    found = catalog()["normalization"].get(name)
    return (tuple(found[0]), tuple(found[1])) if found else None
