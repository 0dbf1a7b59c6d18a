"""Trained trials as predictors: `sweeper ensemble` (scores the top-K on the validation set) and
`sweeper predict` (labels a folder of images).

Images go through exactly what validation did: decoded to the cache's shorter side
(`data.decode`), then the trial's eval transform, with the trial's precision rule, so a member's
accuracy here is the accuracy its trial reported for the epoch its checkpoint holds.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from optuna.trial import FrozenTrial, TrialState
from PIL import Image

from sweeper.analyze.ranking import configurations
from sweeper import store
from sweeper.artifacts import TrialFiles
from sweeper.data import datasets
from sweeper.data.augment import Normalize, eval_transform
from sweeper.errors import SpecError, StorageError
from sweeper.spec.trial_config import TrialConfig
from sweeper.sweep.checkpoints import CHECKPOINT
from sweeper.sweep.recovery import IMPORTED
from sweeper.train import model as models
from sweeper.train.device import Amp, precision_here

METHODS = ("mean", "vote")
TTA = ("none", "flip")
BATCH = 64


@dataclass(frozen=True)
class Member:
    trial: FrozenTrial
    config: TrialConfig
    files: TrialFiles  # where its checkpoint is read from: this machine, or the artifact store

    @property
    def checkpoint(self) -> str:
        return self.files.where(self.trial, CHECKPOINT)


def member_of(trial: FrozenTrial, files: TrialFiles) -> Member | str:
    """The trial as a member, or why it cannot be one."""
    if IMPORTED in trial.user_attrs:
        return f"trial {trial.number} was imported and was never trained here"
    config = files.read(trial, "config.json")
    if config is None:
        return f"trial {trial.number}'s files ({files.where(trial)}) are missing"
    if not files.has(trial, CHECKPOINT):
        return f"trial {trial.number} has no {CHECKPOINT}"
    return Member(trial, TrialConfig.from_json(config.decode()), files)


def no_checkpoint(problems: list[str], study: str, k: int) -> StorageError:
    return StorageError(
        "; ".join(problems) + ". Only the best --keep-checkpoints trials (default 3) keep their "
        f"checkpoint: `sweeper recheck --study {study}` trains the best configurations again, and "
        f"`sweeper run` or `recheck` with --keep-checkpoints {max(k, 3) + 1} or more keeps more")


def top_members(trials: list[FrozenTrial], k: int, study: str, files: TrialFiles) -> list[Member]:
    """The K best trials trained here (imported runs have no weights), by their own value."""
    trained = sorted((t for t in trials if t.state == TrialState.COMPLETE and IMPORTED not in t.user_attrs),
                     key=lambda t: (-t.value, t.number))
    if len(trained) < k:
        raise StorageError(f"study {study!r} has {len(trained)} completed trial(s) trained by "
                           f"sweeper; --top {k} needs {k}")
    found = [member_of(t, files) for t in trained[:k]]
    problems = [m for m in found if isinstance(m, str)]
    if problems:
        raise no_checkpoint(problems, study, k)
    return found


def best_member(trials: list[FrozenTrial], study: str, files: TrialFiles) -> Member:
    """The best configuration (by its mean over seeds), through its best run that kept weights."""
    ranked = configurations(trials)
    if not ranked:
        raise StorageError(f"study {study!r} has no completed trial yet; run `sweeper run` first")
    runs = sorted(ranked[0].runs, key=lambda t: (-t.value, t.number))
    found = [member_of(t, files) for t in runs]
    usable = [m for m in found if not isinstance(m, str)]
    if not usable:
        raise no_checkpoint([m for m in found if isinstance(m, str)], study, 1)
    return usable[0]


class Scorer:
    """One member's network, loaded once, giving class probabilities [N, C] for decoded HWC
    uint8 images, batch by batch (`predict` feeds it a folder a chunk at a time)."""

    def __init__(self, member: Member, tta: str = "none", device: torch.device = torch.device("cpu")):
        data = member.files.read(member.trial, CHECKPOINT)
        if data is None:  # removed since the members were chosen (another sweep's keep_best)
            raise StorageError(f"trial {member.trial.number}'s {CHECKPOINT} is gone from {member.files.where(member.trial)}")
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        self.net = models.create(member.config.model, len(checkpoint["classes"]), False)
        self.net.load_state_dict(checkpoint["state_dict"])
        self.net.to(device, memory_format=torch.channels_last).eval()
        self.amp = Amp(precision_here(member.config.precision, device), device)
        self.transform = eval_transform(member.config.image_size)
        self.normalize = Normalize(member.config.mean, member.config.std, device)
        self.tta = tta

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray], progress: Callable[[int], None] | None = None) -> torch.Tensor:
        out = []
        for start in range(0, len(images), BATCH):
            batch = torch.stack([self.transform(Image.fromarray(images[i]))
                                 for i in range(start, min(start + BATCH, len(images)))])
            views = [batch] + ([batch.flip(3)] if self.tta == "flip" else [])
            probs = 0
            for view in views:
                view = self.normalize(view)
                with self.amp.autocast():
                    logits = self.net(view)
                probs = probs + logits.float().softmax(dim=1).cpu()
            out.append(probs / len(views))
            if progress:
                progress(len(out[-1]))
        return torch.cat(out)


def probabilities(member: Member, images: Sequence[np.ndarray], tta: str = "none",
                  progress: Callable[[int], None] | None = None,
                  device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """Class probabilities [N, C] of one member for decoded HWC uint8 images."""
    return Scorer(member, tta, device)(images, progress)


def combine(member_probs: list[torch.Tensor], method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted labels [N], scores [N, C]). mean: argmax of the averaged probabilities. vote:
    the label most members predict; a tie goes to the tied label with the higher mean probability."""
    mean = torch.stack(member_probs).mean(dim=0)
    if method == "mean":
        return mean.argmax(dim=1), mean
    votes = torch.zeros_like(mean)
    for probs in member_probs:
        votes[torch.arange(len(probs)), probs.argmax(dim=1)] += 1
    # votes dominate; the mean probability (< 1) only orders labels with equal votes
    return (votes + mean / 2).argmax(dim=1), mean


def scores(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    hit = predicted == labels
    per_class = [hit[labels == c].float().mean().item() for c in range(num_classes) if (labels == c).any()]
    return {"accuracy": hit.float().mean().item(), "balanced_accuracy": float(np.mean(per_class))}


def check_classes(members: list[Member], study_user_attrs: dict) -> list[str]:
    classes = [store.classes_of(m.trial, study_user_attrs) for m in members]
    if any(c != classes[0] for c in classes):
        raise SpecError("--top", [("", "the members were trained on different class lists; "
                                       "ensemble trials of one dataset")])
    return classes[0]


def dataset_cache(member: Member, trials_dir: Path, progress=None) -> Path:
    """The study's decoded dataset, as the sweep decoded it (again, on a machine that trained
    none of the members)."""
    cache = Path(member.config.data_cache)
    if not cache.is_file():
        cfg = member.config
        where = cache.parent if cache.parent.is_dir() else trials_dir / ".cache"  # another machine's
        cache = datasets.prepare(datasets.Source.of(cfg), cfg.image_size, where, progress)
    return cache


def validation_set(member: Member, trials_dir: Path, progress=None) -> tuple[Sequence[np.ndarray], torch.Tensor]:
    """The study's validation images, decoded as the sweep decoded them."""
    val = datasets.load(dataset_cache(member, trials_dir, progress)).val
    return val.images, torch.from_numpy(val.labels)


def list_images(folder: Path) -> list[Path]:
    """Every image file under folder, recursively, in a stable (sorted relative path) order."""
    return sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in datasets.IMAGE_EXTENSIONS),
                  key=lambda p: p.relative_to(folder).as_posix())


def decode_side(member: Member) -> int:
    """Decode new images to the shorter side the sweep's cache used, as validation saw them."""
    return datasets.side_of_cache(Path(member.config.data_cache)) or datasets.cache_side(member.config.image_size)


def decode_all(paths: Iterable[Path], side: int) -> tuple[list[np.ndarray], list[Path], list[tuple[Path, str]]]:
    images, ok, bad = [], [], []
    for path in paths:
        try:
            images.append(datasets.decode(str(path), side))
            ok.append(path)
        except Exception as exc:  # listed for the user, never fatal
            bad.append((path, str(exc)))
    return images, ok, bad


def evaluate(members: list[Member], member_probs: list[torch.Tensor], labels: torch.Tensor,
             num_classes: int, method: str) -> dict:
    """Each member's scores, the ensemble's and the best single member's, on the validation set."""
    rows = [{"trial": m.trial.number, "value": m.trial.value,
             **scores(p.argmax(dim=1), labels, num_classes)} for m, p in zip(members, member_probs)]
    predicted, _ = combine(member_probs, method)
    return {"method": method, "val_images": len(labels), "ensemble": scores(predicted, labels, num_classes),
            "members": rows, "best_single": max(rows, key=lambda r: r["accuracy"])}


def saved_path(trials_dir: Path, study: str) -> Path:
    """Where `ensemble` saves its members and method, for `predict --top`."""
    return trials_dir / study / "ensemble.json"
