"""What a trained trial gets wrong on its validation split (`sweeper show --errors` and the
report's section): accuracy per class, the confusion matrix in an order that puts classes
confused with each other side by side, the most confused pairs, and the most confidently wrong
images.

The probabilities come from ensemble.probabilities, so the images go through exactly what
validation did, and a prediction is their argmax: the lowest class on ties, as in
train/evaluation.py. The accuracy here is what the trial reported for its checkpoint's epoch (its value, when the
objective is val_acc).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pandas as pd
from optuna.trial import FrozenTrial, TrialState
from PIL import Image

from sweeper.artifacts import TrialFiles
from sweeper.errors import StorageError, SweeperError
from sweeper.redaction import redact

if TYPE_CHECKING:  # the scoring side (torch) is imported where a checkpoint is scored, so that a
    import torch  # report without the section, and the figures, start without it

    from sweeper.analyze import ensemble as ens

PAIRS = 10  # most confused pairs listed
GALLERY = 24  # most confidently wrong images shown
THUMBNAIL = 128  # px, the longer side
# scipy's optimal leaf ordering grows with the cube of the classes; past this the plain
# dendrogram order (confused pairs still side by side, clusters in merge order) is used
OPTIMAL_ORDER_UP_TO = 300
# classes: past this the report's heatmap shows the MATRIX_UP_TO classes most confused (a
# 10,000-class matrix is 10^8 cells: gigabytes of HTML), and no matrix is clustered (linkage
# needs C^2 memory); confusion.csv keeps every class, in class order
MATRIX_UP_TO = 300

# what a member's probabilities are computed with: ensemble.probabilities, or the CLI's wrapper
# of it (progress bar, CPU share, --gpus)
Scorer = Callable[["ens.Member", Sequence[np.ndarray]], "torch.Tensor"]


@dataclass
class Errors:
    trial: FrozenTrial
    classes: list[str]
    labels: np.ndarray  # [N] true class of each validation image
    probs: np.ndarray  # [N, C] class probabilities
    train_counts: np.ndarray  # [C] training images per class
    images: Sequence[np.ndarray]  # the decoded validation images (HWC uint8), for thumbnails
    names: list[str]  # each validation image's file, relative to the data root (or "#i")
    ema_decay: float = 0.0  # > 0: the checkpoint (and every validation score) is the EMA of the weights
    objective: str = "val_acc"  # what trial.value measures

    @cached_property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)  # the lowest class on ties, as validation

    @cached_property
    def confusion(self) -> np.ndarray:
        """[C, C] counts: rows are the true class, columns the predicted one."""
        c = len(self.classes)
        return np.bincount(self.labels * c + self.predicted, minlength=c * c).reshape(c, c)

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.labels).mean())

    @property
    def balanced_accuracy(self) -> float:
        val = self.confusion.sum(axis=1)
        return float((np.diag(self.confusion)[val > 0] / val[val > 0]).mean())


def per_class(e: Errors) -> pd.DataFrame:
    """Accuracy per class, worst first (then the class with more validation images first);
    classes without a validation image last."""
    val = e.confusion.sum(axis=1)
    correct = np.diag(e.confusion)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(val > 0, correct / val, np.nan)
    frame = pd.DataFrame({"class": e.classes, "accuracy": accuracy, "correct": correct,
                          "val_images": val, "train_images": e.train_counts})
    return frame.sort_values(["accuracy", "val_images"], ascending=[True, False], kind="stable",
                             na_position="last").reset_index(drop=True)


def class_order(confusion: np.ndarray) -> list[int]:
    """Classes ordered by average-linkage clustering of the symmetrised confusion rates, so that
    a pair confused either way sits side by side; the given order when nothing is confused."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    c = len(confusion)
    if c > MATRIX_UP_TO:
        return list(range(c))
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    similarity = rates + rates.T
    np.fill_diagonal(similarity, 0)
    if c < 3 or not similarity.any():
        return list(range(c))
    distance = similarity.max() - similarity
    np.fill_diagonal(distance, 0)
    tree = linkage(squareform(distance, checks=False), method="average",
                   optimal_ordering=c <= OPTIMAL_ORDER_UP_TO)
    return leaves_list(tree).tolist()


def most_confused(confusion: np.ndarray, k: int = MATRIX_UP_TO) -> list[int]:
    """The k classes with the most misclassified images, as true or as predicted class, in
    class order."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    involved = off.sum(axis=0) + off.sum(axis=1)
    return sorted(np.argsort(-involved, kind="stable")[:k].tolist())


def confused_pairs(e: Errors, k: int = PAIRS) -> pd.DataFrame:
    """The k largest off-diagonal cells: true class, predicted class, images, and their share
    of the true class's validation images."""
    off = e.confusion.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:k]
    rows = [(int(i) // len(off), int(i) % len(off)) for i in flat if off.flat[i] > 0]
    val = e.confusion.sum(axis=1)
    return pd.DataFrame([{"true": e.classes[t], "predicted": e.classes[p], "images": int(off[t, p]),
                          "share": off[t, p] / val[t]} for t, p in rows],
                        columns=["true", "predicted", "images", "share"])


def confidently_wrong(e: Errors, k: int = GALLERY) -> pd.DataFrame:
    """The k wrong predictions with the highest probability on the predicted class (ties: the
    lower probability on the true class first, then the image's place in the split)."""
    wrong = np.flatnonzero(e.predicted != e.labels)
    p_pred = e.probs[wrong, e.predicted[wrong]]
    p_true = e.probs[wrong, e.labels[wrong]]
    ranked = wrong[np.lexsort((wrong, p_true, -p_pred))][:k]
    return pd.DataFrame([{"rank": r, "index": int(i), "file": e.names[i], "true": e.classes[e.labels[i]],
                          "predicted": e.classes[e.predicted[i]], "probability": float(e.probs[i, e.predicted[i]]),
                          "true_probability": float(e.probs[i, e.labels[i]])}
                         for r, i in enumerate(ranked, start=1)],
                        columns=["rank", "index", "file", "true", "predicted", "probability", "true_probability"])


def thumbnail(image: np.ndarray, fmt: str = "PNG") -> bytes:
    """A validation image as it was decoded, its longer side at most THUMBNAIL px."""
    picture = Image.fromarray(image)
    picture.thumbnail((THUMBNAIL, THUMBNAIL))
    out = io.BytesIO()
    picture.save(out, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return out.getvalue()


def _val_names(cache: Path, n: int) -> list[str]:
    """The validation files in the cache's order, from the split lists beside it (a built-in
    dataset has none: its images are numbered)."""
    from sweeper.data import datasets

    split = datasets.split_path(cache)
    if split.is_file():
        names = [path for path, _ in json.loads(split.read_text())["val"]]
        if len(names) == n:
            return names
    return [f"#{i}" for i in range(n)]


def analyse(member: ens.Member, trials_dir: Path, score: Scorer) -> Errors:
    """One validation pass of the member's checkpoint, and what it got wrong."""
    from sweeper.analyze import ensemble as ens
    from sweeper.data import datasets

    cache = ens.dataset_cache(member, trials_dir)
    data = datasets.load(cache)
    classes = member.trial.user_attrs.get("classes") or data.classes
    probs = score(member, data.val.images).numpy()
    if probs.shape[1] != len(classes):
        raise StorageError(f"trial {member.trial.number}'s checkpoint has {probs.shape[1]} classes; "
                           f"its dataset has {len(classes)}")
    return Errors(member.trial, list(classes), data.val.labels.astype(np.int64), probs,
                  np.bincount(data.train.labels, minlength=len(classes)), data.val.images,
                  _val_names(cache, len(data.val.labels)), member.config.ema_decay, member.config.objective)


def of_trial(trial: FrozenTrial, study: str, files: TrialFiles, trials_dir: Path, score: Scorer) -> Errors:
    """`show --errors`: any trial that kept its checkpoint; otherwise why not, and what to do."""
    from sweeper.analyze import ensemble as ens

    if trial.state != TrialState.COMPLETE:
        raise StorageError(f"trial {trial.number} is {trial.state.name}: only completed trials keep a "
                           f"checkpoint; `sweeper trials --study {study}` lists them")
    found = ens.member_of(trial, files)
    if isinstance(found, str):
        raise ens.no_checkpoint([found], study, 1)
    return analyse(found, trials_dir, score)


def of_best(trials: list[FrozenTrial], study: str, files: TrialFiles, trials_dir: Path,
            score: Scorer) -> Errors | str:
    """The report's section: the best configuration's kept checkpoint, or why it cannot be
    looked at (never an exception: the rest of the report renders regardless)."""
    from sweeper.analyze import ensemble as ens

    try:
        return analyse(ens.best_member(trials, study, files), trials_dir, score)
    except Exception as exc:  # a missing checkpoint or dataset, a store down, a damaged file
        return redact(str(exc) if isinstance(exc, SweeperError) else f"{type(exc).__name__}: {exc}")


def summary(e: Errors) -> dict:
    """What `show --errors --json` prints: every class, worst first."""
    return {"trial": e.trial.number, "value": e.trial.value, "val_images": int(len(e.labels)),
            "accuracy": e.accuracy, "balanced_accuracy": e.balanced_accuracy, "ema_decay": e.ema_decay,
            "classes": _records(per_class(e)),
            "confused_pairs": _records(confused_pairs(e)),
            "confidently_wrong": _records(confidently_wrong(e))}


def _records(frame: pd.DataFrame) -> list[dict]:
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
