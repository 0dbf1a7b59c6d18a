"""timm's model names and input normalisation, without importing timm in the orchestrator.

Importing timm imports torch and torchvision (about 3 s and 400 MB). The orchestrator needs only
two facts from it, the registered model names (to refuse a mistyped one) and each model's
pretrained mean and std (a trial's normalisation), so those are read from timm once per timm
version and cached in ~/.cache/sweeper (XDG_CACHE_HOME); the workers import timm themselves.
A name the cached catalog lacks is looked up in timm itself before it is refused (a timm
installed from git keeps its version number while it gains models).
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

from sweeper import atomic_files

FORMAT = 1  # of the cached file; part of its name


def _cache_file() -> Path:
    return atomic_files.user_cache_dir() / f"timm-{importlib.metadata.version('timm')}-catalog{FORMAT}.json"


def _from_timm() -> dict:
    import timm

    norm = {}
    for name in timm.list_models() + timm.list_models(include_tags=True):  # names, and name.tag
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
        if cfg is not None:
            norm[name] = [[float(m) for m in cfg.mean], [float(s) for s in cfg.std]]
    return {"names": timm.list_models(), "normalization": norm}


def _usable(found) -> bool:
    return isinstance(found, dict) and isinstance(found.get("names"), list) and \
        isinstance(found.get("normalization"), dict)


_loaded: list[dict] = []  # this process's copy


def forget() -> None:
    _loaded.clear()


def catalog(fresh: bool = False) -> dict:
    """The catalog; `fresh`: read from timm now (and cached again)."""
    if _loaded and not fresh:
        return _loaded[0]
    _loaded[:] = [_read(fresh)]
    return _loaded[0]


def _read(fresh: bool) -> dict:
    try:
        path = _cache_file()
    except (importlib.metadata.PackageNotFoundError, RuntimeError):  # timm without metadata, no home
        return _from_timm()
    if not fresh:
        try:
            found = json.loads(path.read_text())
            if _usable(found):
                return found
        except (OSError, ValueError):  # not yet on this machine for this timm, or damaged
            pass
    found = _from_timm()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_files.write_bytes(path, json.dumps(found).encode())
    except OSError:  # a read-only home: read from timm again next time
        pass
    return found


def unknown(names: list[str]) -> list[str]:
    """The names timm does not know: a model, or a model with a pretrained tag (`resnet50.a1_in1k`)."""
    def missing(found: dict) -> list[str]:
        known = set(found["names"])
        return [n for n in names if (n not in found["normalization"] if "." in n else n not in known)]

    gone = missing(catalog())
    return missing(catalog(fresh=True)) if gone else gone


def model_names() -> list[str]:
    return catalog()["names"]


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean and std of the model's timm pretrained config; None when it has none."""
    found = catalog()["normalization"].get(name)
    return (tuple(found[0]), tuple(found[1])) if found else None
