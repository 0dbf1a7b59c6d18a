"""The `data:` section: where the images are and how they split into train, val and test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeper.errors import quoted

BUILTIN_DATASETS = ("digits",)
DATA_KEYS = ("root", "builtin", "val_fraction", "test_fraction", "test", "num_workers")

Problems = list[tuple[str, str]]


@dataclass(frozen=True)
class DataSpec:
    root: Path | None = None  # ImageFolder root (absolute), or None for a built-in dataset
    builtin: str | None = None
    val_fraction: float = 0.2  # used when root has no val/ folder, and for built-ins
    num_workers: int | str = "auto"  # loader processes per trial (data/loading.py)
    test_fraction: float = 0.0  # a held-out test split cut from the data (data/datasets.py)
    test: Path | None = None  # a test folder elsewhere (root/test/ is found without it)



def parse_data(raw: Any, problems: Problems) -> DataSpec:
    if raw is None:
        raw = {}
    root, builtin = raw.get("root"), raw.get("builtin")
    if root is not None and builtin is not None:
        problems.append(("data", "give data.root (an image folder) or data.builtin, not both"))
    if root is None and builtin is None:
        problems.append(("data.root", "missing: give an image folder (root/train/<class>/*, "
                                      "root/val/<class>/*) or data.builtin: digits"))
    if builtin is not None and builtin not in BUILTIN_DATASETS:
        problems.append(("data.builtin", f"unknown {quoted(builtin)}; valid: {', '.join(BUILTIN_DATASETS)}"))
    vf = raw.get("val_fraction", 0.2)
    if not isinstance(vf, (int, float)) or not 0 < vf < 1:
        problems.append(("data.val_fraction", f"must be a number between 0 and 1, got {quoted(vf)}"))
    tf = raw.get("test_fraction", 0.0)
    if not isinstance(tf, (int, float)) or isinstance(tf, bool) or not 0 <= tf < 1:
        problems.append(("data.test_fraction", f"must be a number from 0 (no test split) to below 1, got {quoted(tf)}"))
    elif isinstance(vf, (int, float)) and 0 < vf < 1 and vf + tf >= 1:
        problems.append(("data.test_fraction", f"val_fraction {vf} + test_fraction {tf} leave no training "
                                               "images; keep their sum below 1"))
    test = raw.get("test")
    if test is not None and not isinstance(test, str):
        problems.append(("data.test", f"must be a folder path, got {quoted(test)}"))
    elif test is not None and not Path(test).expanduser().is_dir():
        problems.append(("data.test", f"test folder {quoted(test)} not found; give a folder of <class>/ folders"))
    nw = raw.get("num_workers", "auto")
    if nw != "auto" and (not isinstance(nw, int) or isinstance(nw, bool) or nw < 0):
        problems.append(("data.num_workers", f"must be auto or an integer >= 0, got {quoted(nw)}"))
    return DataSpec(
        root=Path(root).expanduser().resolve() if isinstance(root, str) else None,
        builtin=builtin if isinstance(builtin, str) else None,
        val_fraction=vf, num_workers=nw, test_fraction=tf if isinstance(tf, (int, float)) else 0.0,
        test=Path(test).expanduser().resolve() if isinstance(test, str) else None,
    )
