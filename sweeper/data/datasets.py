"""Datasets: ImageFolder or built-in, decoded once into a cache that every trial reuses.

Decoding JPEGs dominates small-data epochs, so the orchestrator decodes each image once, at the
largest size any trial needs, into `trials/.cache/` (image_cache.py); workers map that file and
only augment.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from sweeper import atomic_files
from sweeper.data import image_cache
from sweeper.data.augment import CROP_RATIO
from sweeper.errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_SEED = 0  # one split for the whole study, so trials are compared on the same images
BUILTIN_CLASSES = {"digits": [str(d) for d in range(10)]}


@dataclass(frozen=True)
class Listing:
    """Where the images are, before decoding."""

    classes: list[str]
    train: list[tuple[str, int]]  # (path, label)
    val: list[tuple[str, int]]


def _class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images_in(folder: Path, classes: list[str]) -> list[tuple[str, int]]:
    return [
        (str(f), label)
        for label, name in enumerate(classes)
        for f in sorted((folder / name).rglob("*"))
        if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
    ]


def _stratified_split(labels: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    try:
        return train_test_split(idx, test_size=val_fraction, random_state=SPLIT_SEED, stratify=labels)
    except ValueError as exc:
        raise DataError(f"cannot split {len(labels)} images into train/val by val_fraction="
                        f"{val_fraction}: {exc}; add images or change data.val_fraction") from None


def list_folder(root: Path, val_fraction: float) -> Listing:
    """`root/train/<class>/*` + `root/val/<class>/*`, or `root/<class>/*` split by val_fraction."""
    if not root.is_dir():
        raise DataError(f"data root {root} not found; pass --data PATH to a folder with "
                        "train/<class>/ and val/<class>/ (or <class>/ folders)")
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        classes, val_classes = _class_dirs(train_dir), _class_dirs(val_dir)
        if classes != val_classes:
            only_t = sorted(set(classes) - set(val_classes))
            only_v = sorted(set(val_classes) - set(classes))
            raise DataError(f"class folders of {train_dir} and {val_dir} differ: only in train: "
                            f"{', '.join(only_t) or '-'}; only in val: {', '.join(only_v) or '-'}")
        listing = Listing(classes, _images_in(train_dir, classes), _images_in(val_dir, classes))
    else:
        classes = _class_dirs(root)
        everything = _images_in(root, classes)
        if everything:
            labels = np.array([label for _, label in everything])
            tr, va = _stratified_split(labels, val_fraction)
            listing = Listing(classes, [everything[i] for i in tr], [everything[i] for i in va])
        else:
            listing = Listing(classes, [], [])
    if len(listing.classes) < 2:
        raise DataError(f"{root} has {len(listing.classes)} class folder(s); a classifier needs "
                        "at least 2 (layout: train/<class>/*.jpg and val/<class>/*.jpg)")
    for split, items in (("train", listing.train), ("val", listing.val)):
        if not items:
            raise DataError(f"no images found for {split} under {root} "
                            f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return listing


def decode(path: str, side: int) -> np.ndarray:
    """Decode to RGB (grayscale, palette and alpha images included), shorter side <= side."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (side, side))  # JPEG: decode at reduced scale when possible
            im = im.convert("RGB")
            scale = side / min(im.size)
            if scale < 1:
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                               Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).copy()
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {exc}; remove or replace the file") from None


def digits(val_fraction: float) -> tuple[list[str], list[np.ndarray], np.ndarray, list[np.ndarray], np.ndarray]:
    """scikit-learn's handwritten digits (1,797 8x8 grayscale images, shipped with it)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    rgb = [np.repeat(g[:, :, None], 3, axis=2) for g in gray]
    tr, va = _stratified_split(digits.target, val_fraction)
    return ([str(c) for c in digits.target_names], [rgb[i] for i in tr], digits.target[tr],
            [rgb[i] for i in va], digits.target[va])


def cache_side(image_size: int) -> int:
    return math.ceil(image_size / CROP_RATIO)


def side_of_cache(cache: Path) -> int | None:
    """The shorter side a folder dataset's cache was decoded to (None: a built-in dataset)."""
    match = re.search(r"-(\d+)px-[0-9a-f]+\.[a-z]+$", Path(cache).name)
    return int(match.group(1)) if match else None


def _cache_key(source: str, items: list[tuple[str, int]], side: int, val_fraction: float) -> str:
    """Changes when any image is added, removed, relabelled, resized or touched."""
    h = hashlib.sha256(f"{source}|{side}|{val_fraction}".encode())
    for path, label in items:
        st = os.stat(path)
        h.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cache_name(root: str | None, builtin: str | None, val_fraction: float, image_size: int) -> tuple[str, Listing | None]:
    """The cache file name the dataset has now (and its listing, for a folder)."""
    if builtin:
        return f"{builtin}-{val_fraction}{image_cache.SUFFIX}", None
    side = cache_side(image_size)
    listing = list_folder(Path(root), val_fraction)
    key = _cache_key(root, _keyed_items(listing), side, val_fraction)
    return f"{Path(root).name}-{side}px-{key}{image_cache.SUFFIX}", listing


def _keyed_items(listing: Listing) -> list[tuple[str, int]]:
    return listing.train + [(p, -1 - label) for p, label in listing.val]


def _decoded(paths: list[str], side: int, progress: Callable[[int, int], None] | None) -> Iterator[np.ndarray]:
    """Decode in parallel, in order, with a bounded window: memory stays flat in the dataset size."""
    workers = os.cpu_count() or 1
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes without the GIL
        for i, path in enumerate(paths):
            pending.append(pool.submit(decode, path, side))
            if len(pending) > 4 * workers:
                yield pending.popleft().result()
                if progress:
                    progress(i + 1 - len(pending), len(paths))
        while pending:
            yield pending.popleft().result()
            if progress:
                progress(len(paths) - len(pending), len(paths))


def _usable(path: Path) -> bool:
    """A complete, intact cache; a broken one is removed so that it is rebuilt."""
    if not path.exists():
        return False
    try:
        image_cache.verify(path)
        return True
    except image_cache.CacheCorrupt as exc:
        print(f"rebuilding the image cache ({exc})", file=sys.stderr)
        path.unlink(missing_ok=True)
        return False


def prepare(
    root: str | None,
    builtin: str | None,
    val_fraction: float,
    image_size: int,
    cache_dir: Path,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Decode the dataset once into a cache file (reused when present and intact); returns its path."""
    name, listing = cache_name(root, builtin, val_fraction, image_size)
    path = cache_dir / name
    source = {"root": str(Path(root).resolve()) if root else None, "builtin": builtin,
              "val_fraction": val_fraction, "image_size": image_size}
    if listing is not None:
        _write_split(split_path(path), Path(root), listing)
    if _usable(path):
        return path
    if builtin:
        classes, tr_x, tr_y, va_x, va_y = digits(val_fraction)
        image_cache.write(path, classes, tr_x + va_x, [*tr_y, *va_y], len(tr_x), source)
        return path
    items = listing.train + listing.val
    images = _decoded([p for p, _ in items], cache_side(image_size), progress)
    image_cache.write(path, listing.classes, images, [y for _, y in items], len(listing.train), source)
    return path


def split_path(cache: Path) -> Path:
    """The file lists of a cached folder dataset, beside its cache (exports write them out)."""
    return cache.with_suffix(".split.json")


def _write_split(path: Path, root: Path, listing: Listing) -> None:
    """Written once, by whichever orchestrator comes first (the others find it under the lock),
    atomically, and read back; one left damaged (by a crash, a full disk) is written again."""
    def rel(items):
        return [[os.path.relpath(p, root), label] for p, label in items]

    split = {"root": str(root), "classes": listing.classes, "train": rel(listing.train), "val": rel(listing.val)}
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    try:
        with atomic_files.locked(lock):
            if _read_split(path) == split:
                return
            atomic_files.write_bytes(path, json.dumps(split).encode())
            if _read_split(path) != split:
                raise DataError(f"{path} did not read back as written; check the disk (full? a network mount?)")
    finally:
        # nothing left in the cache folder; one who waited on the removed lock file finds the
        # lists written, or writes the same lists atomically again
        lock.unlink(missing_ok=True)


def _read_split(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class CachedImages(torch.utils.data.Dataset):
    """A split of the mapped cache, transformed on access (to a uint8 CHW tensor)."""

    def __init__(self, split: image_cache.Split, transform):
        self.images, self.labels, self.transform = split.images, split.labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def load(path: Path) -> image_cache.ImageCache:
    return image_cache.open_cache(path)
