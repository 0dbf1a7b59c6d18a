"""Datasets: ImageFolder layouts, RGB conversion, splits, the decode cache, and clear errors."""

from __future__ import annotations

import pytest
from PIL import Image

from sweeper.data import datasets
from sweeper.errors import DataError
from sweeper.testing import make_image_folder


def test_folder_with_train_and_val_decodes_every_mode_to_rgb(colour_folder, tmp_path):
    path = datasets.prepare(datasets.Source(str(colour_folder), None, 0.2), 16, tmp_path)
    d = datasets.load(path)
    assert d.classes == ["class_0", "class_1", "class_2"]
    assert len(d.train.images) == 60 and len(d.val.images) == 30
    every = [d.train.images[i] for i in range(60)] + [d.val.images[i] for i in range(30)]
    assert {img.shape[2] for img in every} == {3}
    assert max(min(img.shape[:2]) for img in every) == datasets.cache_side(16)
    assert sorted(d.val.labels.tolist()) == [0] * 10 + [1] * 10 + [2] * 10


def test_cache_is_reused_and_keyed_by_size(colour_folder, tmp_path):
    first = datasets.prepare(datasets.Source(str(colour_folder), None, 0.2), 16, tmp_path)
    mtime = first.stat().st_mtime_ns
    assert datasets.prepare(datasets.Source(str(colour_folder), None, 0.2), 16, tmp_path) == first
    assert first.stat().st_mtime_ns == mtime
    assert datasets.prepare(datasets.Source(str(colour_folder), None, 0.2), 64, tmp_path) != first


def test_single_folder_is_split_stratified_by_val_fraction(tmp_path):
    root = make_image_folder(tmp_path / "flat", classes=3, per_class=12, split=False)
    listing = datasets.list_folder(root, val_fraction=0.25)
    assert len(listing.val) == 9 and len(listing.train) == 27
    assert sorted(label for _, label in listing.val) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    again = datasets.list_folder(root, val_fraction=0.25)
    assert again.val == listing.val  # the same split every time: trials are comparable


def test_builtin_digits(tmp_path):
    d = datasets.load(datasets.prepare(datasets.Source(None, "digits", 0.2), 16, tmp_path))
    assert d.classes == [str(i) for i in range(10)]
    assert len(d.train.images) + len(d.val.images) == 1797
    assert d.train.images[0].shape == (8, 8, 3)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"nowhere not found; pass --data"):
        datasets.list_folder(tmp_path / "nowhere", 0.2)


def test_empty_folder(tmp_path):
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "b").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "b").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found for train"):
        datasets.list_folder(tmp_path / "empty", 0.2)


def test_train_val_class_mismatch_names_the_classes(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=3, per_class=6)
    (root / "val" / "class_2").rename(root / "val" / "class_9")
    with pytest.raises(DataError, match="only in train: class_2; only in val: class_9"):
        datasets.list_folder(root, 0.2)


def test_unreadable_image_is_named(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=2, per_class=6)
    bad = root / "train" / "class_1" / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="cannot read image .*broken.jpg"):
        datasets.prepare(datasets.Source(str(root), None, 0.2), 16, tmp_path / "cache")


def test_large_images_are_cached_downscaled(tmp_path):
    root = tmp_path / "big"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            Image.new("RGB", (400, 300), (10, 200, 30)).save(root / split / c / "x.jpg")
    d = datasets.load(datasets.prepare(datasets.Source(str(root), None, 0.2), 32, tmp_path / "cache"))
    assert d.train.images[0].shape == (datasets.cache_side(32), 49, 3)
