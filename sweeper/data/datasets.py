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
from PIL import Image

from sweeper import atomic_files
from sweeper.cpu_share import host_cores
from sweeper.data import image_cache
from sweeper.data.image_file import TooLarge, open_image
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
    test: list[tuple[str, int]] = ()  # held out: scored once, on the configuration a sweep returns


@dataclass(frozen=True)
class Source:
    """Which images a study trains, validates and tests on (data.* of the space file)."""

    root: str | None = None
    builtin: str | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.0  # split off for a test split when the data has none
    test: str | None = None  # data.test: a folder of <class>/* images elsewhere

    @classmethod
    def of(cls, config) -> "Source":
        """A TrialConfig's."""
        return cls(config.data_root, config.data_builtin, config.val_fraction, config.test_fraction,
                   config.data_test)


def _class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images_in(folder: Path, classes: list[str]) -> list[tuple[str, int]]:
    return [
        (str(f), label)
        for label, name in enumerate(classes)
        for f in sorted((folder / name).rglob("*"))
        if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
    ]


def _stratified_split(labels: np.ndarray, fraction: float, key: str = "data.val_fraction",
                      what: str = "train/val") -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    try:
        return train_test_split(idx, test_size=fraction, random_state=SPLIT_SEED, stratify=labels)
    except ValueError as exc:
        raise DataError(f"cannot split {len(labels)} images into {what} by {key.split('.')[-1]}="
                        f"{fraction}: {exc}; add images or change {key}") from None


def _split_off_test(labels: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(kept, test) indices: test_fraction of the images, stratified, with the study's seed."""
    if not test_fraction:
        return np.arange(len(labels)), np.arange(0)
    return _stratified_split(labels, test_fraction, "data.test_fraction", "train/test")


def list_folder(root: Path, val_fraction: float, test_fraction: float = 0.0, test: str | None = None) -> Listing:
    """`root/train/<class>/*` + `root/val/<class>/*` (+ `root/test/<class>/*`), or `root/<class>/*`
    split by val_fraction (and test_fraction). `test` names a test folder elsewhere; with
    test_fraction and train/val folders the test images come out of train, so that validation
    (what the sweep selects on) stays as the user made it."""
    if not root.is_dir():
        raise DataError(f"data root {root} not found; pass --data PATH to a folder with "
                        "train/<class>/ and val/<class>/ (or <class>/ folders)")
    train_dir, val_dir, test_dir = root / "train", root / "val", root / "test"
    if train_dir.is_dir() and val_dir.is_dir():
        classes = _class_dirs(train_dir)
        _same_classes(classes, train_dir, val_dir)
        train, val = _images_in(train_dir, classes), _images_in(val_dir, classes)
        kept, held = _split_off_test(np.array([y for _, y in train]), test_fraction)
        listing = Listing(classes, [train[i] for i in kept], val, [train[i] for i in held])
        if test is None and test_dir.is_dir():
            test = str(test_dir)
    else:
        classes = _class_dirs(root)
        everything = _images_in(root, classes)
        if everything:
            labels = np.array([label for _, label in everything])
            kept, held = _split_off_test(labels, test_fraction)
            # the share of what is left that makes val_fraction of the whole (all of it without a test split)
            tr, va = _stratified_split(labels[kept], val_fraction / (1 - test_fraction))
            listing = Listing(classes, [everything[kept[i]] for i in tr], [everything[kept[i]] for i in va],
                              [everything[i] for i in held])
        else:
            listing = Listing(classes, [], [])
    if len(listing.classes) < 2:
        raise DataError(f"{root} has {len(listing.classes)} class folder(s); a classifier needs "
                        "at least 2 (layout: train/<class>/*.jpg and val/<class>/*.jpg)")
    if test is not None:
        listing = Listing(listing.classes, listing.train, listing.val, _test_folder(Path(test), listing.classes))
    for split, items in (("train", listing.train), ("val", listing.val)):
        if not items:
            raise DataError(f"no images found for {split} under {root} "
                            f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return listing


def _same_classes(classes: list[str], train_dir: Path, other: Path) -> None:
    others = _class_dirs(other)
    if classes != others:
        only_t = sorted(set(classes) - set(others))
        only_o = sorted(set(others) - set(classes))
        raise DataError(f"class folders of {train_dir} and {other} differ: only in train: "
                        f"{', '.join(only_t) or '-'}; only in {other.name}: {', '.join(only_o) or '-'}")


def _test_folder(folder: Path, classes: list[str]) -> list[tuple[str, int]]:
    """A test split's images (`<class>/*`); a class train lacks is an error, a class it lacks is not."""
    if not folder.is_dir():
        raise DataError(f"test split {folder} not found; data.test must be a folder of <class>/ folders")
    extra = sorted(set(_class_dirs(folder)) - set(classes))
    if extra:
        raise DataError(f"test split {folder} has classes that train lacks: {', '.join(extra)}; "
                        "remove them or add them to train")
    items = _images_in(folder, classes)  # a class without a folder there has no test images
    if not items:
        raise DataError(f"no images found in the test split {folder} "
                        f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove it")
    return items


def decode(path: str, side: int) -> np.ndarray:
    """Decode to RGB (grayscale, palette and alpha images included), shorter side <= side."""
    try:
        with open_image(path) as im:
            im.draft("RGB", (side, side))  # JPEG: decode at reduced scale when possible
            im = im.convert("RGB")
            scale = side / min(im.size)
            if scale < 1:
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                               Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).copy()
    except TooLarge:
        raise
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {exc}; remove or replace the file") from None


def digits(val_fraction: float, test_fraction: float = 0.0) -> tuple[list[str], dict[str, tuple[list[np.ndarray], np.ndarray]]]:
    """scikit-learn's handwritten digits (1,797 8x8 grayscale images, shipped with it), as
    {split: (images, labels)} for train, val and test (empty without test_fraction)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    rgb = [np.repeat(g[:, :, None], 3, axis=2) for g in gray]
    kept, held = _split_off_test(digits.target, test_fraction)
    tr, va = _stratified_split(digits.target[kept], val_fraction / (1 - test_fraction))
    splits = {"train": kept[tr], "val": kept[va], "test": held}
    return [str(c) for c in digits.target_names], {
        name: ([rgb[i] for i in idx], digits.target[idx]) for name, idx in splits.items()}


# Images are cached with their shorter side at image_size / CROP_RATIO, then center-cropped
# (mmcls's 256 -> 224); the transforms (augment.py) and the exports say the same.
CROP_RATIO = 0.875


def cache_side(image_size: int) -> int:
    return math.ceil(image_size / CROP_RATIO)


def side_of_cache(cache: Path) -> int | None:
    """The shorter side a folder dataset's cache was decoded to (None: a built-in dataset)."""
    match = re.search(r"-(\d+)px-[0-9a-f]+\.[a-z]+$", Path(cache).name)
    return int(match.group(1)) if match else None


def _cache_key(source: Source, items: list[tuple[str, int]], side: int) -> str:
    """Changes when any image is added, removed, relabelled, moved between splits, resized or touched."""
    h = hashlib.sha256(f"{source.root}|{side}|{source.val_fraction}".encode())
    if source.test_fraction or source.test:  # studies without a test split keep their caches
        h.update(f"|{source.test_fraction}|{source.test}".encode())
    for path, label in items:
        st = os.stat(path)
        h.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cache_name(source: Source, image_size: int) -> tuple[str, Listing | None]:
    """The cache file name the dataset has now (and its listing, for a folder)."""
    if source.builtin:
        test = f"-test{source.test_fraction}" if source.test_fraction else ""
        return f"{source.builtin}-{source.val_fraction}{test}{image_cache.SUFFIX}", None
    side = cache_side(image_size)
    listing = list_folder(Path(source.root), source.val_fraction, source.test_fraction, source.test)
    key = _cache_key(source, _keyed_items(listing), side)
    return f"{Path(source.root).name}-{side}px-{key}{image_cache.SUFFIX}", listing


# the stems cache_name makes (and earlier sweepers made, as .pt): <folder>-<side>px-<key> or
# <builtin>-<val_fraction>[-test<test_fraction>]; `cache clean` touches no other file
_CACHE_STEM = re.compile(rf"(?:.+-\d+px-[0-9a-f]{{16}}|(?:{'|'.join(BUILTIN_CLASSES)})-[0-9.e-]+(?:-test[0-9.e-]+)?)")


def is_cache_stem(stem: str) -> bool:
    return _CACHE_STEM.fullmatch(stem) is not None


def _keyed_items(listing: Listing) -> list[tuple[str, int | str]]:
    """Every image with its label and split (train's and val's spelled as before test splits, so
    that those caches stay valid)."""
    return (listing.train + [(p, -1 - label) for p, label in listing.val]
            + [(p, f"test/{label}") for p, label in listing.test])


def _decoded(paths: list[str], side: int, progress: Callable[[int, int], None] | None) -> Iterator[np.ndarray]:
    """Decode in parallel, in order, with a bounded window: memory stays flat in the dataset size."""
    workers = host_cores()
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


def prepare(source: Source, image_size: int, cache_dir: Path,
            progress: Callable[[int, int], None] | None = None) -> Path:
    """Decode the dataset once into a cache file (reused when present and intact); returns its path."""
    name, listing = cache_name(source, image_size)
    path = cache_dir / name
    described = {"root": str(Path(source.root).resolve()) if source.root else None, "builtin": source.builtin,
                 "val_fraction": source.val_fraction, "image_size": image_size,
                 "test_fraction": source.test_fraction, "test": source.test}
    if listing is not None:
        _write_split(split_path(path), Path(source.root), listing)
    if _usable(path):
        return path
    if source.builtin:
        classes, splits = digits(source.val_fraction, source.test_fraction)
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = splits["train"], splits["val"], splits["test"]
        image_cache.write(path, classes, tr_x + va_x + te_x, [*tr_y, *va_y, *te_y], len(tr_x), described,
                          n_val=len(va_x))
        return path
    items = listing.train + listing.val + list(listing.test)
    images = _decoded([p for p, _ in items], cache_side(image_size), progress)
    image_cache.write(path, listing.classes, images, [y for _, y in items], len(listing.train), described,
                      n_val=len(listing.val))
    return path


def split_path(cache: Path) -> Path:
    """The file lists of a cached folder dataset, beside its cache (exports write them out)."""
    return cache.with_suffix(".split.json")


def _write_split(path: Path, root: Path, listing: Listing) -> None:
    """Written once, by whichever orchestrator comes first (the others find it under the lock),
    atomically, and read back; one left damaged (by a crash, a full disk) is written again."""
    def rel(items):
        return [[os.path.relpath(p, root), label] for p, label in items]

    split = {"root": str(root), "classes": listing.classes, "train": rel(listing.train), "val": rel(listing.val),
             "test": rel(listing.test)}
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


def load(path: Path) -> image_cache.ImageCache:
    return image_cache.open_cache(path)
