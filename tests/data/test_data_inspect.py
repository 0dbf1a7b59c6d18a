"""`sweeper data inspect` counts what is on disk: classes, modes, sizes, duplicates, broken files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.testing import huge_png, make_image_folder

runner = CliRunner()


@pytest.fixture
def folder(tmp_path):
    # make_image_folder: per class, i % 3 == 0 -> val; i % 4 == 1 grayscale PNG, == 2 palette PNG,
    # else RGB JPEG; every image 24 x 20
    root = make_image_folder(tmp_path / "ds", classes=3, per_class=12)
    shutil.copy(root / "train/class_0/img_4.jpg", root / "train/class_1/dup.jpg")  # within train
    shutil.copy(root / "val/class_0/img_0.jpg", root / "train/class_2/leak.jpg")  # across splits
    (root / "train/class_1/broken.png").write_bytes(b"\x89PNG but not really")
    Image.fromarray(np.zeros((10, 30, 4), np.uint8), "RGBA").save(root / "val/class_2/alpha.png")
    return root


def test_counts_modes_sizes_duplicates_and_unreadable_match_the_files(folder, tmp_path):
    out = tmp_path / "page.html"
    result = runner.invoke(app, ["data", "inspect", str(folder), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["images"] == {"train": {"class_0": 8, "class_1": 10, "class_2": 9},
                           "val": {"class_0": 4, "class_1": 4, "class_2": 5}}
    assert r["imbalance"]["train"] == pytest.approx(10 / 8)
    assert r["modes"] == {"rgb": 20, "grayscale": 9, "palette": 9, "alpha": 1}
    assert r["sizes"]["most_common"][0] == {"size": "24x20", "images": 38}
    assert r["sizes"]["width"]["max"] == 30 and r["sizes"]["height"]["min"] == 10
    groups = sorted(sorted(g) for g in r["duplicates"]["groups"])
    assert groups == [["train/class_0/img_4.jpg", "train/class_1/dup.jpg"],
                      ["train/class_2/leak.jpg", "val/class_0/img_0.jpg"]]
    assert (r["duplicates"]["within train"], r["duplicates"]["across train and val"]) == (1, 1)
    [bad] = r["unreadable"]
    assert bad["file"] == "train/class_1/broken.png" and "cannot identify image file" in bad["reason"]
    page = out.read_text()
    assert page.count("plotly-graph-div") == 2 and "Images per class" in page and "class_2" in page


def test_an_image_above_the_pixel_cap_is_listed_from_its_header_not_decoded(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its page goes to trials/inspect/ here, not into the checkout
    huge_png(folder / "train" / "class_0" / "huge.png")
    result = runner.invoke(app, ["data", "inspect", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    reasons = {row["file"]: row["reason"] for row in json.loads(result.output)["unreadable"]}
    assert "13000x13000 = 169,000,000 pixels, above the cap of 64,000,000" in reasons["train/class_0/huge.png"]
    monkeypatch.setenv("SWEEPER_MAX_PIXELS", str(13000 * 13000))  # the cap is the user's to raise
    raised = json.loads(runner.invoke(app, ["data", "inspect", str(folder), "--json"]).output)
    assert "train/class_0/huge.png" not in {row["file"] for row in raised["unreadable"]}


def test_the_terminal_table(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["data", "inspect", str(folder)])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == "ds: 3 classes, 27 train / 13 val images"
    assert lines[3].split() == ["class_1", "10", "4"]
    assert "imbalance train: 1.25 (largest class_1 10, smallest class_0 8)" in result.output
    assert "1 within train, 0 within val, 1 across train and val" in result.output
    assert "  train/class_1/broken.png: " in result.output
    assert (tmp_path / "trials/inspect/ds.html").is_file()


def test_a_split_by_val_fraction_and_the_builtin(tmp_path):
    root = make_image_folder(tmp_path / "flat", classes=2, per_class=10, split=False)
    r = json.loads(runner.invoke(app, ["data", "inspect", str(root), "--val-fraction", "0.5", "--json",
                                       "--out", str(tmp_path / "a.html")]).output)
    assert r["totals"] == {"train": 10, "val": 10}
    d = json.loads(runner.invoke(app, ["data", "inspect", "--builtin", "digits", "--json",
                                       "--out", str(tmp_path / "d.html")]).output)
    assert d["totals"]["train"] + d["totals"]["val"] == 1797  # scikit-learn's digits
    assert d["modes"] == {"grayscale": 1797}


@pytest.mark.parametrize("args, message", [
    (["missing-folder"], "missing-folder: is not a folder"),
    ([], "give an image folder PATH or --builtin digits"),
    (["--builtin", "mnist"], "unknown 'mnist'"),
    (["--builtin", "digits", "--val-fraction", "1.5"], "--val-fraction: must be between 0 and 1"),
])
def test_bad_input_is_one_error_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["data", "inspect", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "trials").exists()
