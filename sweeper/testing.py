"""Helpers for tests and benchmarks: small real image folders and search-space files."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

# Distinct hues, so a tiny model can learn the classes in an epoch or two.
_COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 30), (200, 40, 200)]


def make_image_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 20,
                      split: bool = True, seed: int = 0) -> Path:
    """Write noisy coloured images as root/{train,val}/<class>/*.{png,jpg}.

    Modes vary on purpose (RGB JPEG, grayscale PNG, palette PNG) to exercise RGB conversion.
    """
    rng = np.random.default_rng(seed)
    for c in range(classes):
        for i in range(per_class):
            sub = ("val" if i % 3 == 0 else "train") if split else ""
            folder = root / sub / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            base = np.array(_COLOURS[c % len(_COLOURS)], dtype=np.float64)
            pixels = np.clip(base + rng.normal(0, 40, (size, size + 4, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            if i % 4 == 1:
                image.convert("L").save(folder / f"img_{i}.png")
            elif i % 4 == 2:
                image.convert("P").save(folder / f"img_{i}.png")
            else:
                image.save(folder / f"img_{i}.jpg", quality=90)
    return root


def huge_png(path: Path, side: int = 13000) -> Path:
    """A one-colour PNG of side x side pixels: ~160 KB on disk, hundreds of MB decoded (drawn
    1 bit a pixel, 21 MB here, never decoded whole by what it tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("1", (side, side), 1).save(path, optimize=False)
    return path


def tiny_space(data_root: Path | None = None, **sections: Any) -> dict[str, Any]:
    """A search space that trains in seconds on CPU; sections override (merged one level deep)."""
    doc: dict[str, Any] = {
        "study": "tiny",
        "data": {"root": str(data_root), "image_size": 16} if data_root else
                {"builtin": "digits", "image_size": 16},
        "model": {"name": "test_resnet", "pretrained": False},
        "train": {"epochs": 2, "batch_size": 16, "schedule": "cosine",
                  "augment": "flip_crop", "precision": "fp32"},
        "search": {"n_trials": 2, "sampler": {"name": "random", "seed": 0},
                   "pruner": "none"},
        "space": {"lr": {"low": 0.01, "high": 0.1, "log": True}},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    for name in doc.get("space") or {}:  # a searched knob is not also fixed
        for section in ("data", "model", "train"):
            doc[section].pop(name, None)
    return doc


def write_space(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def make_study(storage: str, name: str, complete: int, pruned: int = 0, failed: int = 0,
               epochs: int = 4, seed: int = 0):
    """A study with trials written straight into a real store (no training), for report tests.

    Values rise with lr so that importances have something to find; pruned trials stop early.
    """
    import datetime

    import optuna
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )
    from optuna.trial import TrialState

    rng = np.random.default_rng(seed)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr("objective", "val_acc")
    dists = {"lr": FloatDistribution(1e-4, 1.0, log=True),
             "batch_size": CategoricalDistribution([32, 64, 128]),
             "frozen_stages": IntDistribution(-1, 4)}
    start = datetime.datetime(2026, 1, 1, 12, 0, 0)
    states = [TrialState.COMPLETE] * complete + [TrialState.PRUNED] * pruned + [TrialState.FAIL] * failed
    for i, state in enumerate(states):
        params = {"lr": float(10 ** rng.uniform(-4, 0)), "batch_size": int(rng.choice([32, 64, 128])),
                  "frozen_stages": int(rng.integers(-1, 5))}
        final = 0.2 + 0.15 * (np.log10(params["lr"]) + 4) + rng.normal(0, 0.02)
        run = epochs if state == TrialState.COMPLETE else (1 if state == TrialState.PRUNED else 0)
        curve = {e: float(final * e / epochs) for e in range(1, run + 1)}
        begun = start + datetime.timedelta(seconds=30 * i)
        trial = optuna.trial.create_trial(
            state=state, params=params, distributions=dists,
            value=float(final) if state == TrialState.COMPLETE else None,
            intermediate_values=curve,
            user_attrs={"slot": i % 2, "epochs": epochs, "epochs_run": run, "duration_s": 25.0,
                        **({"reason": "pruned after epoch 1"} if state == TrialState.PRUNED else {}),
                        **({"reason": "worker exited with code 1"} if state == TrialState.FAIL else {})})
        trial.datetime_start, trial.datetime_complete = begun, begun + datetime.timedelta(seconds=25)
        study.add_trial(trial)
    return study


def start_s3_server() -> tuple[subprocess.Popen, str]:
    """moto's standalone S3-compatible server on a free loopback port (the `test` extra installs
    it); returns the process and its endpoint URL, once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            urllib.request.urlopen(url + "/", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("moto_server did not start within 30 s")
