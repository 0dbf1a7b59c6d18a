"""Does the search beat the user's hand-tuned grid for the same epochs? Measured in one run.

Sides, each a real `sweeper run` in a folder of its own, on one dataset and model:

  grid:      the twelve manual configurations of CONTEXT.md (search_spaces/caltech_manual.csv),
             their 100-epoch milestones scaled in proportion to --epochs, every epoch trained;
  median:    sweeper's TPE with the median pruner;
  hyperband: TPE with Optuna's Hyperband (min_resource 1, reduction_factor 3);
  asha:      TPE with sweeper's asha (pauses at rungs 1, 3, 9, ... and promotes);
  1-epoch:   TPE with the baseline of Egele et al. 2023 (train every configuration one epoch,
             continue the top third), run as asha with a single rung at epoch 1.

Every TPE side searches the manual runs' knobs (lr, batch size, frozen stages, step milestones
or cosine, augmentation) with a budget of exactly the grid's total epochs (--budget-epochs).
For each side the table gives the best validation accuracy of a completed trial once 1/3, 1/2
and all of those epochs were trained (epochs ordered by when they finished), and the epochs it
retrained. Target: sweeper's best at 1/3 of the grid's epochs is at least the grid's best.

    python benchmarks/search.py --data ../shared/data/caltech20 \\
        --pretrained ../shared/data/pretrained/resnet18_caltech61_96px.pth   # about an hour on 2 CPU cores
    python benchmarks/search.py --quick      # 4 configurations x 2 epochs on generated images
"""

from __future__ import annotations

import argparse
import csv
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from sweeper.sweep import epochs as epoch_count
from sweeper.testing import make_image_folder, write_space

ROOT = Path(__file__).resolve().parents[1]
MANUAL = ROOT / "search_spaces" / "caltech_manual.csv"
MANUAL_EPOCHS = 100
SIDES = {
    "median": {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 1},
    "hyperband": {"name": "hyperband", "min_resource": 1, "reduction_factor": 3},
    "asha": {"name": "asha", "min_resource": 1, "reduction_factor": 3},
    "1-epoch": {"name": "asha", "min_resource": 1, "reduction_factor": 3, "max_resource": 2},
}


def scaled(milestones: list[int], epochs: int) -> list[int]:
    """100-epoch milestones in proportion to `epochs`: floor(m / 100 * E), at least 1, below E."""
    out = sorted({max(1, math.floor(m * epochs / MANUAL_EPOCHS)) for m in milestones})
    return [m for m in out if m < epochs] or [max(1, epochs - 1)]


def manual_configs(epochs: int) -> list[dict]:
    configs = []
    with open(MANUAL) as f:
        for row in csv.DictReader(f):
            c = {"lr": float(row["lr"]), "batch_size": int(row["batch_size"]),
                 "frozen_stages": int(row["frozen_stages"]), "augment": row["augment"],
                 "schedule": row["schedule"]}
            if row["schedule"] == "step":
                c["milestones"] = scaled(yaml.safe_load(row["milestones"]), epochs)
            configs.append(c)
    return configs


def space_doc(args, data: Path, study: str, configs: list[dict]) -> dict:
    milestones = sorted({tuple(c["milestones"]) for c in configs if "milestones" in c})
    return {
        "study": study,
        "data": {"root": str(data), "image_size": args.size},
        "model": {"name": args.model, "pretrained": args.pretrained},
        "train": {"epochs": args.epochs, "optimizer": {"name": "sgd", "momentum": 0.9, "weight_decay": 1.0e-4},
                  "lr_scaling": {"rule": "none", "base_batch_size": 64},
                  "warmup": {"type": "linear", "iters": 20, "ratio": 0.1}, "gamma": 0.1,
                  "augment": {"num_ops": 2, "magnitude": 9, "magnitude_std": 0.5}},
        "search": {"n_trials": 1000, "sampler": {"name": "tpe", "seed": 0}, "objective": "val_acc"},
        "space": {"lr": {"low": 0.025, "high": 0.4, "log": True}, "batch_size": [32, 64, 128, 256],
                  "frozen_stages": {"low": -1, "high": 4}, "schedule": ["step", "cosine"],
                  "milestones": {"choices": [list(m) for m in milestones], "when": {"schedule": "step"}},
                  "augment": ["flip_crop", "swin_randaug"]},
        "augment_policies": {"swin_randaug": ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize",
                                              "Solarize", "SolarizeAdd", "ColorTransform", "Contrast",
                                              "Brightness", "Sharpness", "Shear", "Translate"]},
    }


def run_side(folder: Path, doc: dict, budget: int | None) -> list[optuna.trial.FrozenTrial]:
    folder.mkdir(parents=True)
    space = write_space(folder / "space.yaml", doc)
    cmd = [sys.executable, "-m", "sweeper", "run", "--space", str(space)]
    if budget:
        cmd += ["--budget-epochs", str(budget)]
    done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{folder.name} failed:\n{done.stderr[-3000:]}")
    study = optuna.load_study(study_name=doc["study"], storage=f"sqlite:///{folder / 'studies.db'}")
    return study.get_trials()


def epoch_times(folder: Path, study: str, trial) -> list[tuple[float, int]]:
    """(when it finished, epoch) for each epoch the trial trained itself: its workers' segments
    (several when ASHA paused it) plus each epoch's seconds from its metrics.csv."""
    path = folder / "trials" / study / str(trial.number) / "metrics.csv"
    if not path.is_file():
        return []
    seconds = {int(r["epoch"]): float(r["seconds"]) for r in csv.DictReader(open(path))}
    carried = trial.user_attrs.get(epoch_count.RESUMED_AFTER, 0)
    bounds = [carried] + trial.user_attrs.get("pauses", []) + [max(seconds, default=0)]
    out = []
    for (start, _), lo, hi in zip(trial.user_attrs.get("segments", []), bounds, bounds[1:]):
        t = start
        for e in range(lo + 1, hi + 1):
            t += seconds.get(e, 0.0)
            out.append((t, e))
    return out


def best_by_epochs(folder: Path, study: str, trials, marks: list[int]) -> list[float | None]:
    """The best completed value once `mark` epochs had been trained, for each mark."""
    events = sorted((t_end, trial.number, e) for trial in trials for t_end, e in epoch_times(folder, study, trial))
    final = {t.number: (max(t.intermediate_values), t.value) for t in trials
             if t.state == TrialState.COMPLETE and t.intermediate_values}
    best, out, trained, i = None, [], 0, 0
    for mark in marks:
        while i < len(events) and trained < mark:
            _, number, e = events[i]
            trained += 1
            i += 1
            if number in final and final[number][0] == e:
                best = final[number][1] if best is None else max(best, final[number][1])
        out.append(best)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/caltech20"))
    parser.add_argument("--pretrained", default="../shared/data/pretrained/resnet18_caltech61_96px.pth")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    configs = manual_configs(args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.quick:
            args.model, args.size, args.epochs, args.pretrained = "test_resnet", 16, 2, False
            configs = manual_configs(args.epochs)[:4]
            data = make_image_folder(root / "data", classes=3, per_class=20)
        else:
            data = args.data.resolve()
            if isinstance(args.pretrained, str) and args.pretrained not in ("true", "false"):
                args.pretrained = str(Path(args.pretrained).resolve())
            else:
                args.pretrained = args.pretrained == "true"
        grid_epochs = len(configs) * args.epochs
        marks = [grid_epochs // 3, grid_epochs // 2, grid_epochs]
        rows = []
        grid_doc = space_doc(args, data, "grid", configs)
        grid_doc["search"].update(n_trials=len(configs), sampler={"name": "random", "seed": 0}, pruner="none")
        grid_doc["enqueue"] = configs
        trials = run_side(root / "grid", grid_doc, None)
        rows.append(("grid (manual configurations)", best_by_epochs(root / "grid", "grid", trials, marks),
                     epoch_count.trained(trials), epoch_count.retrained(trials)))
        for name, pruner in SIDES.items():
            doc = space_doc(args, data, name.replace("-", ""), configs)
            doc["search"]["pruner"] = pruner
            folder = root / name
            trials = run_side(folder, doc, grid_epochs)
            rows.append((f"tpe + {name}", best_by_epochs(folder, doc["study"], trials, marks),
                         epoch_count.trained(trials), epoch_count.retrained(trials)))
    print(f"\n{args.model} at {args.size} px, {args.epochs} epochs per trial; the grid's {len(configs)} "
          f"configurations take {grid_epochs} epochs; best val_acc of a completed trial after")
    head = [f"{marks[0]} ep (1/3)", f"{marks[1]} ep (1/2)", f"{marks[2]} ep (all)"]
    print(f"{'side':<30} {head[0]:>13} {head[1]:>13} {head[2]:>13} {'trained':>8} {'retrained':>9}")
    for label, best, trained, retrained in rows:
        cells = [f"{b:.4f}" if b is not None else "-" for b in best]
        print(f"{label:<30} {cells[0]:>13} {cells[1]:>13} {cells[2]:>13} {trained:>8} {retrained:>9}")
    grid_best = rows[0][1][2]
    ours = max((r[1][0] for r in rows[1:] if r[1][0] is not None), default=None)
    met = ours is not None and grid_best is not None and ours >= grid_best
    print(f"target (sweeper's best at 1/3 >= the grid's best): {'met' if met else 'not met'} "
          f"({'-' if ours is None else f'{ours:.4f}'} vs {'-' if grid_best is None else f'{grid_best:.4f}'})")


if __name__ == "__main__":
    main()
