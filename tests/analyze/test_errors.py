"""What the best model gets wrong (`show --errors`, the report's section), on a study whose
checkpoint was written here with planted predictions: a random test_resnet whose head is solved
so that each validation image gets the logits chosen below. Every expected value is computed
here from the planted labels (sklearn, numpy), never by sweeper."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
import timm
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from PIL import Image
from sklearn.metrics import confusion_matrix
from torchvision import transforms
from typer.testing import CliRunner

from sweeper.analyze import errors as analysis
from sweeper.analyze.report_errors import confusion_figure
from sweeper.cli import app
from sweeper.data import datasets
from sweeper.spec.sweep_spec import parse_spec
from sweeper.spec.trial_config import resolve
from sweeper.testing import tiny_space

runner = CliRunner()
CLASSES = ["class_0", "class_1", "class_2"]
# per true class, the wrong predictions planted on its first validation images
WRONG = {0: [2], 1: [2, 2, 2, 2, 0], 2: [1, 1]}


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _planted(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted label, target logits) per validation image: right ones at logit 3, wrong ones
    with a confidence that grows with their place, so the gallery's order is known."""
    predicted, logits = labels.copy(), np.zeros((len(labels), len(CLASSES)))
    wrong = 0
    for c, preds in WRONG.items():
        for i, p in zip(np.flatnonzero(labels == c), preds):
            predicted[i] = p
    for i, p in enumerate(predicted):
        if p != labels[i]:
            logits[i, p] = 0.5 + 0.4 * wrong
            wrong += 1
        else:
            logits[i, p] = 3.0
    return predicted, logits


def _inputs(config, images) -> torch.Tensor:
    size = config.image_size
    to_input = transforms.Compose([transforms.Resize(int(size / 0.875)), transforms.CenterCrop(size),
                                   transforms.ToTensor(), transforms.Normalize(config.mean, config.std)])
    return torch.stack([to_input(Image.fromarray(images[i])) for i in range(len(images))])


@pytest.fixture(scope="module")
def planted(tmp_path_factory, colour_folder):
    """Study `errs`: trial 0 (best, with a checkpoint), trial 1 (complete, no checkpoint), trial 2
    (failed); study `bare`: its best trial kept no checkpoint."""
    root = tmp_path_factory.mktemp("errs")
    spec = parse_spec(tiny_space(colour_folder, study="errs", model={"name": "test_resnet", "pretrained": False}))
    cache = datasets.prepare(datasets.Source(str(colour_folder), None, spec.data.val_fraction), 16, root / ".cache")
    data = datasets.load(cache)
    configs = [resolve(spec, n, {"lr": 0.01}, root / "trials", cache) for n in range(2)]
    configs[0] = dataclasses.replace(configs[0], ema_decay=0.999)  # its checkpoint: EMA weights
    for c in configs:
        c.save()
    labels = data.val.labels.astype(np.int64)
    predicted, logits = _planted(labels)

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", num_classes=3).eval()
    with torch.no_grad():
        features = net.forward_head(net.forward_features(_inputs(configs[0], data.val.images)), pre_logits=True)
    # the head that maps these features to the planted logits (more features than images: exact)
    design = np.hstack([features.double().numpy(), np.ones((len(labels), 1))])
    solved = np.linalg.lstsq(design, logits, rcond=None)[0]
    head = net.get_classifier()
    head.weight.data = torch.from_numpy(solved[:-1].T.copy()).float()
    head.bias.data = torch.from_numpy(solved[-1].copy()).float()
    with torch.no_grad():
        probs = net(_inputs(configs[0], data.val.images)).softmax(dim=1).numpy()
    assert (probs.argmax(1) == predicted).all()  # the premise: the model predicts what was planted
    torch.save({"state_dict": net.state_dict(), "classes": CLASSES, "model": "test_resnet"},
               Path(configs[0].trial_dir) / "checkpoint.pth")

    storage = f"sqlite:///{root / 'studies.db'}"
    accuracy = float((predicted == labels).mean())
    for name, values in (("errs", [accuracy, 0.5]), ("bare", [0.9, 0.5])):
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        for n, value in enumerate(values):
            trial_dir = configs[n].trial_dir if name == "errs" else configs[1].trial_dir
            study.add_trial(optuna.trial.create_trial(
                params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-3, 1.0, log=True)}, value=value,
                user_attrs={"trial_dir": trial_dir, "classes": CLASSES, "epochs_run": 2}))
        study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"reason": "boom"}))
    return {"root": root, "storage": storage, "labels": labels, "predicted": predicted, "probs": probs,
            "accuracy": accuracy, "train": np.bincount(data.train.labels, minlength=3)}


def _expected_classes(p) -> list[tuple[str, float, int, int]]:
    """(class, accuracy, val images, train images), worst first, by hand."""
    cm = confusion_matrix(p["labels"], p["predicted"], labels=[0, 1, 2])
    rows = [(CLASSES[c], cm[c, c] / cm[c].sum(), int(cm[c].sum()), int(p["train"][c])) for c in range(3)]
    return sorted(rows, key=lambda r: (r[1], -r[2]))


def _expected_wrong(p) -> list[tuple[str, str, float]]:
    wrong = np.flatnonzero(p["predicted"] != p["labels"])
    conf = p["probs"][wrong, p["predicted"][wrong]]
    return [(CLASSES[p["labels"][i]], CLASSES[p["predicted"][i]], float(p["probs"][i, p["predicted"][i]]))
            for i in wrong[np.argsort(-conf)]]


def test_show_errors_json_matches_the_planted_predictions(planted):
    result = cli("show", "--study", "errs", "--trial", 0, "--storage", planted["storage"], "--errors",
                 "--gpus", "none", "--trials-dir", planted["root"] / "trials", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["accuracy"] == pytest.approx(planted["accuracy"])  # what the trial "reported"
    assert [(r["class"], r["accuracy"], r["val_images"], r["train_images"]) for r in out["classes"]] == \
        [(c, pytest.approx(a), v, t) for c, a, v, t in _expected_classes(planted)]
    cm = confusion_matrix(planted["labels"], planted["predicted"])
    pairs = sorted(((cm[t, q], t, q) for t in range(3) for q in range(3) if t != q and cm[t, q]),
                   key=lambda x: (-x[0], x[1], x[2]))
    assert [(r["true"], r["predicted"], r["images"]) for r in out["confused_pairs"]] == \
        [(CLASSES[t], CLASSES[q], int(n)) for n, t, q in pairs]
    wrong = _expected_wrong(planted)
    assert [(r["true"], r["predicted"]) for r in out["confidently_wrong"]] == [(t, q) for t, q, _ in wrong]
    assert [r["probability"] for r in out["confidently_wrong"]] == pytest.approx([p for *_, p in wrong], abs=1e-4)
    assert all(r["file"].startswith("val/") for r in out["confidently_wrong"])  # which image it is


def test_show_errors_prints_worst_classes_and_writes_gallery_and_matrix(planted, tmp_path):
    folder = tmp_path / "errors"
    result = cli("show", "--study", "errs", "--trial", 0, "--storage", planted["storage"], "--errors",
                 "--gpus", "none", "--trials-dir", planted["root"] / "trials", "--out", folder)
    assert result.exit_code == 0, result.output
    worst = _expected_classes(planted)
    lines = result.output.splitlines()
    table = lines[lines.index("worst 3 classes:") + 2:][:3]
    assert [line.split()[0] for line in table] == [c for c, *_ in worst]
    assert "most confused pairs (true -> predicted):" in result.output
    wrong = _expected_wrong(planted)
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert len(pngs) == len(wrong) == 8
    assert pngs[0] == f"01_true-{wrong[0][0]}_pred-{wrong[0][1]}.png"
    assert Image.open(folder / pngs[0]).size[0] <= 128
    with open(folder / "confusion.csv") as f:
        rows = list(csv.reader(f))
    cm = confusion_matrix(planted["labels"], planted["predicted"])
    got = {(r[0], col): int(v) for r in rows[1:] for col, v in zip(rows[0][1:], r[1:])}
    assert got == {(CLASSES[t], CLASSES[q]): int(cm[t, q]) for t in range(3) for q in range(3)}
    page = (folder / "errors.html").read_text()
    assert page.count("<img src='data:image/jpeg;base64,") == 8 and "plotly-graph-div" in page


def test_show_errors_of_a_trial_without_checkpoint_says_what_to_do(planted, tmp_path):
    result = cli("show", "--study", "errs", "--trial", 1, "--storage", planted["storage"], "--errors",
                 "--gpus", "none", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith("Error: trial 1 has no checkpoint.pth")
    assert "sweeper recheck --study errs" in result.output and "--keep-checkpoints" in result.output
    assert not (tmp_path / "x").exists()
    failed = cli("show", "--study", "errs", "--trial", 2, "--storage", planted["storage"], "--errors", "--gpus", "none")
    assert failed.exit_code == 2 and failed.output.startswith("Error: trial 2 is FAIL: only completed trials")


def test_out_without_errors_is_refused(planted, tmp_path):
    result = cli("show", "--study", "errs", "--trial", 0, "--storage", planted["storage"], "--out", tmp_path)
    assert result.exit_code == 2 and result.output.startswith("Error: --out:") and "--errors" in result.output


def _figures(text: str) -> list[dict]:
    """The plotly traces embedded in the HTML."""
    out, decoder = [], json.JSONDecoder()
    for m in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', text):
        out += decoder.raw_decode(text, m.end())[0]
    return out


def _report(planted, tmp_path, study: str) -> str:
    out = tmp_path / "r.html"
    result = cli("report", "--study", study, "--storage", planted["storage"], "--out", out,
                 "--trials-dir", planted["root"] / "trials")
    assert result.exit_code == 0, result.output
    return out.read_text()


def test_report_section_shows_heatmap_table_and_gallery_of_the_best_checkpoint(planted, tmp_path):
    text = _report(planted, tmp_path, "errs")
    section = text[text.index(">What the best model gets wrong</h2>"):]
    assert "Cannot be shown" not in section
    heatmaps = [t for t in _figures(text) if t.get("type") == "heatmap"]
    assert len(heatmaps) == 1
    h = heatmaps[0]
    cm = confusion_matrix(planted["labels"], planted["predicted"])
    shown = {(y, x): h["z"][i][j] for i, y in enumerate(h["y"]) for j, x in enumerate(h["x"])}
    assert shown == {(CLASSES[t], CLASSES[q]): int(cm[t, q]) for t in range(3) for q in range(3)}
    assert "true %{y}" in h["hovertemplate"] and "predicted %{x}" in h["hovertemplate"]
    assert section.count("<img src='data:image/jpeg;base64,") == 8
    table = section[section.index("per-class"):section.index("</table>")]
    assert re.findall(r"<td>(class_\d)</td>", table) == [c for c, *_ in _expected_classes(planted)]
    assert f"accuracy {planted['accuracy']:.4f}" in section
    assert "holds the EMA of the weights (decay 0.999)" in section
    summary = text[text.index(">Summary</h2>"):text.index(">Top trials</h2>")]
    assert "Trial 0 was validated on the EMA of its weights (decay 0.999)" in summary


def test_report_without_a_kept_checkpoint_says_so_and_renders(planted, tmp_path):
    text = _report(planted, tmp_path, "bare")
    out = tmp_path / "r.html"
    assert ">Timeline</h2>" in text  # the rest of the report is there
    section = text[text.index(">What the best model gets wrong</h2>"):]
    assert "Cannot be shown: trial 0 has no checkpoint.pth" in section
    assert "the EMA of" not in text
    assert "<img" not in section and not [t for t in _figures(text) if t.get("type") == "heatmap"]
    skipped = cli("report", "--study", "bare", "--storage", planted["storage"], "--out", out, "--no-errors")
    assert skipped.exit_code == 0 and "Cannot be shown: left out (--no-errors)" in out.read_text()


def _errors(labels, predicted, n_classes) -> analysis.Errors:
    probs = np.full((len(labels), n_classes), 0.1 / n_classes)
    probs[np.arange(len(labels)), predicted] = 0.9
    trial = optuna.trial.create_trial(value=0.5)
    return analysis.Errors(trial, [f"c{i}" for i in range(n_classes)], np.asarray(labels), probs,
                           np.zeros(n_classes, dtype=int), [], [f"#{i}" for i in range(len(labels))])


def test_order_puts_pairs_confused_either_way_side_by_side():
    labels, predicted = [], []
    for c in range(8):  # 10 images a class, all right but the planted confusions
        labels += [c] * 10
        predicted += [c] * 10
    for true, wrong, n in ((0, 5, 4), (5, 0, 3), (2, 7, 5), (1, 4, 2), (4, 1, 2)):
        start = labels.index(true)
        predicted[start:start + n] = [wrong] * n
    order = analysis.class_order(_errors(labels, predicted, 8).confusion)
    assert sorted(order) == list(range(8))
    for a, b in ((0, 5), (2, 7), (1, 4)):
        assert abs(order.index(a) - order.index(b)) == 1, order


def test_heatmap_at_120_classes_hides_cell_text_and_keeps_the_hover():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(120), 3)
    predicted = np.where(rng.random(len(labels)) < 0.2, rng.integers(0, 120, len(labels)), labels)
    big = confusion_figure(_errors(labels, predicted, 120)).data[0]
    assert big.texttemplate is None and "true %{y}" in big.hovertemplate
    assert np.array(big.z).sum() == len(labels)
    small = confusion_figure(_errors([0, 1, 2], [0, 2, 2], 3)).data[0]
    assert small.texttemplate == "%{z}"


def test_a_matrix_past_the_limit_is_summarised_to_the_classes_most_confused():
    n = analysis.MATRIX_UP_TO + 200
    labels = np.repeat(np.arange(n), 2)
    predicted = labels.copy()
    predicted[::2] = (labels[::2] + 1) % n  # each class's first image taken for the next class
    predicted[labels == 7] = 400  # class 7 wholly, class 400 more: the two most confused
    e = _errors(labels, predicted, n)
    figure = confusion_figure(e)
    shown = figure.data[0]
    assert len(shown.x) == len(shown.y) == analysis.MATRIX_UP_TO
    assert {"c7", "c400"} <= set(shown.x)
    assert f"the {analysis.MATRIX_UP_TO} classes (of {n}) most confused" in figure.layout.title.text
    assert analysis.class_order(e.confusion) == list(range(n))  # not clustered
