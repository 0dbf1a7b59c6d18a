"""The decoded-image cache: one uint8 file that every worker and loader process memory-maps.

Layout (little-endian):

    [0:8)    magic b"SWPIMG01"
    [8:16)   offset of the index (0 while the file is being written)
    [16:24)  length of the index
    [24:32)  crc32 of the pixel bytes
    [32:...) pixels: every image's HWC uint8 bytes, packed back to back (train, val, then test)
    [index)  JSON: classes, labels, offsets, shapes, n_train, n_val, the source it was decoded from

Pages of a memory-mapped file are shared by every process that maps it, so K workers hold one
copy, not K, and a worker "loads" the cache in milliseconds. The writer streams images to disk
as they are decoded, so no process ever holds the decoded set. A file that does not check out
(truncated, wrong magic, bad index, wrong checksum) is rebuilt, never trusted.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

MAGIC = b"SWPIMG01"
HEADER = struct.Struct("<8sQQQ")
SUFFIX = ".imgcache"


class CacheCorrupt(Exception):
    """The file is not a complete, intact cache; the caller rebuilds it."""


def write(path: Path, classes: list[str], images: Iterable[np.ndarray], labels: list[int],
          n_train: int, source: dict, n_val: int | None = None) -> None:
    """Stream `images` (HWC uint8: train, val, test) into `path`, atomically (a reader never sees
    half); n_val None: all after train are val."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    offsets, shapes, crc = [], [], 0
    try:
        with open(tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, 0, 0, 0))
            pos = HEADER.size
            for img in images:
                img = np.ascontiguousarray(img, dtype=np.uint8)
                if img.ndim != 3 or img.shape[2] != 3:
                    raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
                raw = img.tobytes()
                f.write(raw)
                crc = zlib.crc32(raw, crc)
                offsets.append(pos)
                shapes.append(list(img.shape))
                pos += len(raw)
            if len(offsets) != len(labels):
                raise ValueError(f"{len(offsets)} images but {len(labels)} labels")
            n_val = len(offsets) - n_train if n_val is None else n_val
            index = json.dumps({"classes": list(classes), "n_train": n_train, "n_val": n_val,
                                "labels": list(map(int, labels)),
                                "offsets": offsets, "shapes": shapes, "source": source}).encode()
            f.write(index)
            f.seek(0)
            f.write(HEADER.pack(MAGIC, pos, len(index), crc))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_index(path: Path) -> tuple[dict, int, int]:
    """The index, the pixels' end and their crc32, or CacheCorrupt."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic, index_at, index_len, crc = HEADER.unpack(f.read(HEADER.size))
            if magic != MAGIC or index_at < HEADER.size or index_at + index_len != size:
                raise CacheCorrupt(f"{path.name}: incomplete or not a sweeper cache")
            f.seek(index_at)
            index = json.loads(f.read(index_len))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise CacheCorrupt(f"{path.name}: {exc}") from None
    offsets = np.asarray(index.get("offsets", []), dtype=np.int64)
    shapes = np.asarray(index.get("shapes", []), dtype=np.int64).reshape(-1, 3)
    n = len(offsets)
    n_val = index.setdefault("n_val", n - index.get("n_train", 0))  # caches before test splits: none
    if (len(shapes) != n or len(index.get("labels", [])) != n or not 0 <= index.get("n_train", -1) <= n
            or not 0 <= n_val <= n - index["n_train"]
            or (n and (offsets[0] != HEADER.size or offsets[-1] + shapes[-1].prod() != index_at
                       or np.any(offsets[1:] != offsets[:-1] + shapes[:-1].prod(axis=1))))):
        raise CacheCorrupt(f"{path.name}: the index does not match the pixel data")
    return index, index_at, crc


def verify(path: Path) -> None:
    """Check the whole file, pixels included (crc32), or raise CacheCorrupt."""
    _, end, crc = _read_index(path)
    actual = 0
    with open(path, "rb") as f:
        f.seek(HEADER.size)
        left = end - HEADER.size
        while left:
            chunk = f.read(min(left, 1 << 24))
            if not chunk:
                raise CacheCorrupt(f"{path.name}: truncated")
            actual = zlib.crc32(chunk, actual)
            left -= len(chunk)
    if actual != crc:
        raise CacheCorrupt(f"{path.name}: pixel data does not match its checksum")


def describe(path: Path) -> dict:
    """What `sweeper cache list` shows of one file (its index, without the pixels)."""
    index, _, _ = _read_index(path)
    return {"classes": len(index["classes"]), "train": index["n_train"], "val": index["n_val"],
            "test": len(index["offsets"]) - index["n_train"] - index["n_val"], "source": index["source"]}


class PackedImages:
    """A split's images as zero-copy HWC uint8 views of the mapped file.

    Picklable: a process it is sent to (a spawned loader worker) maps the file itself.
    """

    def __init__(self, path: Path, offsets: np.ndarray, shapes: np.ndarray):
        self.path, self.offsets, self.shapes = Path(path), offsets, shapes
        self._buffer: np.ndarray | None = None

    def _pixels(self) -> np.ndarray:
        if self._buffer is None:
            with open(self.path, "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._buffer = np.frombuffer(mapped, dtype=np.uint8)
        return self._buffer

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        h, w, c = self.shapes[i]
        start = self.offsets[i]
        return self._pixels()[start:start + h * w * c].reshape(h, w, c)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_buffer": None}


@dataclass(frozen=True)
class Split:
    images: PackedImages
    labels: np.ndarray


@dataclass(frozen=True)
class ImageCache:
    classes: list[str]
    train: Split
    val: Split
    source: dict
    test: Split  # empty without a test split


def open_cache(path: Path) -> ImageCache:
    """Map a cache (its index is checked, its pixels are not: `verify` does that once, when
    the orchestrator prepares the sweep)."""
    index, _, _ = _read_index(Path(path))
    offsets = np.asarray(index["offsets"], dtype=np.int64)
    shapes = np.asarray(index["shapes"], dtype=np.int64).reshape(-1, 3)
    labels = np.asarray(index["labels"], dtype=np.int64)
    n, v = index["n_train"], index["n_val"]

    def split(sl: slice) -> Split:
        return Split(PackedImages(path, offsets[sl], shapes[sl]), labels[sl])

    return ImageCache(index["classes"], split(slice(0, n)), split(slice(n, n + v)), index["source"],
                      split(slice(n + v, None)))
