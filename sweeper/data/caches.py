"""What `trials/.cache/` holds, for `sweeper cache list` and `sweeper cache clean`.

A cache is current while its dataset still lists the same files (paths, sizes, mtimes) at the
same decode size; once an image is added, removed or touched, the next sweep decodes a new cache
and the old one is stale: nothing reads it again, so `clean` removes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sweeper.cpu_share import pid_alive
from sweeper.data import datasets, image_cache
from sweeper.errors import DataError

CURRENT, STALE, BROKEN, OLD, PARTIAL = "current", "stale", "broken", "old format", "partial"


@dataclass(frozen=True)
class Entry:
    path: Path
    state: str
    dataset: str
    images: int | None
    size: int  # bytes on disk, its file list included
    why: str = ""

    def to_json(self) -> dict:
        return {"file": self.path.name, "state": self.state, "dataset": self.dataset,
                "images": self.images, "bytes": self.size, "why": self.why}


def _size(path: Path) -> int:
    split = datasets.split_path(path)
    return path.stat().st_size + (split.stat().st_size if split.exists() else 0)


MAX_PID = 2**22  # Linux's largest pid_max: a larger number in a name was never a writer's pid


def _entry(path: Path) -> Entry | None:
    """The file as a cache, or None: being written, or not a name sweeper makes (a user's file)."""
    partial = re.fullmatch(rf"(.+){re.escape(image_cache.SUFFIX)}\.tmp(\d{{1,20}})", path.name)
    if partial:
        if not datasets.is_cache_stem(partial[1]):
            return None
        if int(partial[2]) <= MAX_PID and pid_alive(int(partial[2])):
            return None  # being written right now
        return Entry(path, PARTIAL, "-", None, path.stat().st_size, "left by a decode that was stopped")
    if path.suffix not in (".pt", image_cache.SUFFIX) or not datasets.is_cache_stem(path.stem):
        return None
    if path.suffix == ".pt":
        return Entry(path, OLD, "-", None, _size(path), "written by an earlier sweeper")
    try:
        info = image_cache.describe(path)
    except image_cache.CacheCorrupt as exc:
        return Entry(path, BROKEN, "-", None, _size(path), str(exc))
    src = info["source"]
    images = info["train"] + info["val"]
    if src.get("builtin"):
        return Entry(path, CURRENT, src["builtin"], images, _size(path))
    try:
        name, _ = datasets.cache_name(datasets.Source(src["root"], None, src["val_fraction"],
                                                      src.get("test_fraction", 0.0), src.get("test")),
                                      src["image_size"])
    except DataError as exc:
        return Entry(path, STALE, src["root"], images, _size(path), f"dataset unreadable: {exc}")
    if name != path.name:
        return Entry(path, STALE, src["root"], images, _size(path), "images added, removed or changed since")
    return Entry(path, CURRENT, src["root"], images, _size(path))


def entries(cache_dir: Path) -> list[Entry]:
    if not cache_dir.is_dir():
        return []
    found = (_entry(p) for p in sorted(cache_dir.iterdir()) if p.is_file() and not p.name.endswith(".split.json"))
    return [e for e in found if e is not None]


def remove(entry: Entry) -> None:
    entry.path.unlink(missing_ok=True)
    if entry.state == PARTIAL:
        return
    # the file list is shared by an old-format cache and a new one of the same dataset
    siblings = [entry.path.with_suffix(s) for s in (".pt", image_cache.SUFFIX)]
    if not any(p.exists() for p in siblings):
        datasets.split_path(entry.path).unlink(missing_ok=True)
