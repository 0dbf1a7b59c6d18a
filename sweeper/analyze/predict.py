"""`sweeper predict`: which trials label a folder of images, and the submission CSV they write."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

import torch
from optuna.trial import FrozenTrial

from sweeper.analyze import ensemble as ens
from sweeper.errors import DataError

COLUMNS = ["file", "class", "probability", "top5", "top5_probabilities"]
CHUNK = 256  # images decoded at a time: memory stays flat however many the folder holds


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


def label_folder(members: list[ens.Member], paths: list[Path], tta: str, device,
                 progress: Callable[[int], None] | None = None
                 ) -> tuple[list[torch.Tensor], list[Path], list[tuple[Path, str]]]:
    """(each member's probabilities [N, C] for the readable images, those images, (path, why)
    for the rest): the images are decoded and scored CHUNK at a time, each member's network
    loaded once."""
    scorers = [ens.Scorer(m, tta, device) for m in members]
    sides = [ens.decode_side(m) for m in members]
    probs: list[list[torch.Tensor]] = [[] for _ in members]
    ok, bad = [], []
    for start in range(0, len(paths), CHUNK):
        chunk = paths[start:start + CHUNK]
        decoded = {side: ens.decode_all(chunk, side) for side in set(sides)}
        _, ok_here, bad_here = decoded[sides[0]]  # a file unreadable at one size is at every size
        ok += ok_here
        bad += bad_here
        for scorer, side, out in zip(scorers, sides, probs):
            if decoded[side][0]:
                out.append(scorer(decoded[side][0], progress))
    if not ok:
        raise DataError(f"none of the {len(paths)} image(s) could be read; first: {bad[0][0]} ({bad[0][1]})")
    return [torch.cat(p) for p in probs], ok, bad
