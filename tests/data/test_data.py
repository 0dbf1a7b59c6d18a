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


def test_the_split_file_is_written_once_and_a_damaged_one_is_written_again(tmp_path):
    import json
    import multiprocessing

    root = make_image_folder(tmp_path / "single", classes=2, per_class=10, split=False)
    cache = datasets.prepare(datasets.Source(str(root), None, 0.3), 16, tmp_path / "cache")
    split = datasets.split_path(cache)
    written = split.read_text()
    inode = split.stat().st_ino
    datasets.prepare(datasets.Source(str(root), None, 0.3), 16, tmp_path / "cache")
    assert split.stat().st_ino == inode  # found, not written again
    split.write_text(written[: len(written) // 2])  # a crash or a full disk left half of it
    datasets.prepare(datasets.Source(str(root), None, 0.3), 16, tmp_path / "cache")
    assert json.loads(split.read_text()) == json.loads(written)
    # orchestrators starting together: one writes it, all read the same lists, no temporaries left
    split.unlink()
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.starmap(datasets.prepare, [(datasets.Source(str(root), None, 0.3), 16, tmp_path / "cache")] * 4)
    assert json.loads(split.read_text()) == json.loads(written)
    assert not [p.name for p in (tmp_path / "cache").iterdir() if p.name.endswith((".tmp", ".lock"))]


def test_an_atomic_write_that_fails_leaves_no_temporary_and_names_are_unique_across_machines(tmp_path):
    import socket

    from sweeper import atomic_files

    target = tmp_path / "state.pt"
    names = {atomic_files.temporary_name(target) for _ in range(100)}
    assert len(names) == 100 and all(socket.gethostname()[:10] in n.name for n in names)
    (tmp_path / "taken").mkdir()  # the rename onto a folder fails
    with pytest.raises(OSError):
        atomic_files.write_bytes(tmp_path / "taken", b"data")
    with pytest.raises(ZeroDivisionError):
        with atomic_files.replacing(target) as tmp:
            tmp.write_bytes(b"half")
            1 / 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
