"""`sweeper predict`: which trials label a folder of images, and the submission CSV they write."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
from optuna.trial import FrozenTrial

from sweeper.analyze import ensemble as ens

COLUMNS = ["file", "class", "probability", "top5", "top5_probabilities"]


def predictors(trials: list[FrozenTrial], top: int | None, study: str,
               saved: Path, files) -> tuple[list[ens.Member], str]:
    """The best configuration alone, or the top-K ensemble with the method `ensemble` saved for
    exactly those members (else mean)."""
    if top is None or top == 1:
        return [ens.best_member(trials, study, files)], "mean"
    members = ens.top_members(trials, top, study, files)
    described = json.loads(saved.read_text()) if saved.is_file() else {}
    same = [r["trial"] for r in described.get("members", [])] == [m.trial.number for m in members]
    return members, described["method"] if same else "mean"


def write_csv(out: Path, root: Path, paths: list[Path], predicted: torch.Tensor, mean: torch.Tensor,
              classes: list[str]) -> None:
    """One row per image: its path under root, the label, its probability and the top 5."""
    top_p, top_i = mean.topk(min(5, len(classes)), dim=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for i, (path, label) in enumerate(zip(paths, predicted.tolist())):
            writer.writerow([path.relative_to(root).as_posix(), classes[label], f"{mean[i, label]:.6f}",
                             ";".join(classes[j] for j in top_i[i].tolist()),
                             ";".join(f"{v:.6f}" for v in top_p[i].tolist())])
