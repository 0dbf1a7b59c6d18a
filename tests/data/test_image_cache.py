"""The memory-mapped decoded cache: keyed by the files, rebuilt when broken, listed and cleaned."""

from __future__ import annotations

import json
import multiprocessing
import os
import time

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.data import datasets, image_cache
from sweeper.testing import make_image_folder


def _folder(tmp_path):
    return make_image_folder(tmp_path / "pics", classes=2, per_class=10)


def _pixels_by_hand(path: str, side: int) -> np.ndarray:
    """PIL's own decode of one file: RGB, shorter side scaled down to `side` (bilinear)."""
    with Image.open(path) as im:
        im.draft("RGB", (side, side))
        im = im.convert("RGB")
        if min(im.size) > side:
            s = side / min(im.size)
            im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)
        return np.asarray(im)


def test_the_cache_holds_every_image_as_pil_decodes_it(tmp_path):
    root = _folder(tmp_path)
    path = datasets.prepare(datasets.Source(str(root), None, 0.2), 16, tmp_path / "cache")
    cache = datasets.load(path)
    listing = datasets.list_folder(root, 0.2)
    for split, items in ((cache.train, listing.train), (cache.val, listing.val)):
        assert split.labels.tolist() == [label for _, label in items]
        for i, (file, _) in enumerate(items):
            assert np.array_equal(split.images[i], _pixels_by_hand(file, datasets.cache_side(16)))


def test_a_changed_or_added_image_gives_a_new_cache(tmp_path):
    root = _folder(tmp_path)
    first = datasets.prepare(datasets.Source(str(root), None, 0.2), 16, tmp_path / "cache")
    victim = next((root / "train" / "class_0").iterdir())
    Image.new("RGB", (20, 20), (1, 2, 3)).save(victim, format=Image.open(victim).format)
    os.utime(victim, ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = datasets.prepare(datasets.Source(str(root), None, 0.2), 16, tmp_path / "cache")
    assert changed != first
    Image.new("RGB", (20, 20), (9, 9, 9)).save(root / "val" / "class_1" / "new.png")
    added = datasets.prepare(datasets.Source(str(root), None, 0.2), 16, tmp_path / "cache")
    assert added not in (first, changed)
    assert len(datasets.load(added).val.images) == len(datasets.load(first).val.images) + 1


def test_a_truncated_or_corrupt_cache_is_rebuilt_never_trusted(tmp_path, capsys):
    root = _folder(tmp_path)
    path = datasets.prepare(datasets.Source(str(root), None, 0.2), 16, tmp_path / "cache")
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated: a crash mid-copy, a full disk
    assert datasets.prepare(datasets.Source(str(root), None, 0.2), 16, tmp_path / "cache") == path
    assert path.read_bytes() == good
    assert "rebuilding the image cache" in capsys.readouterr().err
    flipped = bytearray(good)
    flipped[image_cache.HEADER.size + 5] ^= 0xFF  # one pixel changed on disk
    path.write_bytes(bytes(flipped))
    datasets.prepare(datasets.Source(str(root), None, 0.2), 16, tmp_path / "cache")
    assert path.read_bytes() == good
    path.write_bytes(b"not a cache at all")
    datasets.prepare(datasets.Source(str(root), None, 0.2), 16, tmp_path / "cache")
    assert path.read_bytes() == good


def _shape_in_child(images, queue):
    queue.put([images[i].shape for i in range(len(images))])


def test_a_spawned_process_maps_the_file_itself(tmp_path):
    path = datasets.prepare(datasets.Source(None, "digits", 0.2), 16, tmp_path)
    images = datasets.load(path).val.images
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_shape_in_child, args=(images, queue))
    child.start()
    shapes = queue.get(timeout=60)
    child.join()
    assert shapes == [(8, 8, 3)] * len(images)


def test_cache_list_and_clean(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = _folder(tmp_path)
    cache_dir = tmp_path / "trials" / ".cache"
    old = datasets.prepare(datasets.Source(str(root), None, 0.2), 16, cache_dir)
    Image.new("RGB", (20, 20), (9, 9, 9)).save(root / "val" / "class_1" / "new.png")
    current = datasets.prepare(datasets.Source(str(root), None, 0.2), 16, cache_dir)
    digits = datasets.prepare(datasets.Source(None, "digits", 0.2), 16, cache_dir)
    (cache_dir / "pics-19px-0123456789abcdef.imgcache").write_bytes(b"garbage")
    (cache_dir / "pics-19px-0123456789abcdef.pt").write_bytes(b"an old torch.save cache")
    (cache_dir / f"pics-19px-0123456789abcdef.imgcache.tmp{2**22 + 12345}").write_bytes(b"half")  # no such pid
    (cache_dir / "pics-19px-0123456789abcdef.imgcache.tmp99999999999999999999").write_bytes(b"half")
    users = ["model.pt", "notes.imgcache", "x.tmp99999999999999999999", "x.imgcache.tmp12", "best.pth"]
    for name in users:  # a user's files in the folder: never listed, never removed
        (cache_dir / name).write_bytes(b"mine")

    runner = CliRunner()
    listed = runner.invoke(app, ["cache", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    states = {row["file"]: row["state"] for row in json.loads(listed.output)}
    assert states == {old.name: "stale", current.name: "current", digits.name: "current",
                      "pics-19px-0123456789abcdef.imgcache": "broken",
                      "pics-19px-0123456789abcdef.pt": "old format",
                      f"pics-19px-0123456789abcdef.imgcache.tmp{2**22 + 12345}": "partial",
                      "pics-19px-0123456789abcdef.imgcache.tmp99999999999999999999": "partial"}
    text = runner.invoke(app, ["cache", "list"])
    assert "images added, removed or changed since" in text.output

    cleaned = runner.invoke(app, ["cache", "clean"])
    assert cleaned.exit_code == 0, cleaned.output
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(
        [current.name, datasets.split_path(current).name, digits.name, *users])
    assert len(datasets.load(current).val.images) == len(datasets.list_folder(root, 0.2).val)  # intact

    everything = runner.invoke(app, ["cache", "clean", "--all"])
    assert everything.exit_code == 0 and sorted(p.name for p in cache_dir.iterdir()) == sorted(users)
