"""Which search strategy should a user pick at a small budget? Measured over sampler seeds.

Sides, each a real `sweeper run` on one dataset and model (one study store and trials folder,
so the decoded images are shared):

  grid:                  the twelve manual configurations of CONTEXT.md
                         (search_spaces/caltech_manual.csv), their 100-epoch milestones scaled to
                         --epochs, every epoch trained: the user's way, one run;
  tpe + asha (mf):       sweeper's default TPE, multi-fidelity (search/multi_fidelity.py), with asha;
  tpe + asha (final):    TPE that models finished trials only (`multi_fidelity: false`), asha;
  random + asha:         random configurations, asha;
  1-epoch:               Egele et al. 2023's i-Epoch with i = 1: random configurations, one
                         rung at epoch 1, the top third continued (asha, max_resource 2).

Every side but the grid gets 1/4 of the grid's epochs (--budget-epochs) and runs once per
sampler seed 0..N-1. For each side the table gives the median [min-max] over seeds of the best
validation accuracy of a COMPLETE trial once 1/4, 1/2 and all of its budget was trained (epochs
ordered by when they finished), and the epochs it retrained. --recheck retrains each run's
winner with 2 more seeds (`sweeper recheck`) and gives the mean ± std of its runs. Target: the
multi-fidelity side's median best at its budget (1/4 of the grid's epochs) is above the
1-epoch and random + asha medians, and at least the grid's best after all its epochs.

Data with a test split (test/ beside train/ and val/, as benchmarks/tasks.py writes them) adds
the test accuracy of the configuration each run returns (`run` scores it at the end) and, per
seed, each side's difference from the 1-epoch baseline's: the live check of a replay verdict
(issue 27). --sides also takes the screening candidates' names (oneepochk: the default until
2026-12-07, 1-epoch with the known configurations queued first; halfepoch, screen, screenu,
screenh, screenuh: replay.py's strategies of those labels; screenuh is the default now), which
are not run by default:

    python benchmarks/search.py --data benchmarks/data/caltech20 --sides oneepoch,screenuh \
        --pretrained ../shared/data/pretrained/resnet18_caltech61_96px.pth

    python benchmarks/search.py --data ../shared/data/caltech20 \\
        --pretrained ../shared/data/pretrained/resnet18_caltech61_96px.pth   # ~45 min on 2 CPU cores
    python benchmarks/search.py --quick      # 4 configurations x 2 epochs, 1 seed, generated images
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from sweeper.analyze.ranking import configurations
from sweeper.sweep import epochs as epoch_count
from sweeper.testing import make_image_folder, write_space

ROOT = Path(__file__).resolve().parents[1]
MANUAL = ROOT / "search_spaces" / "caltech_manual.csv"
MANUAL_EPOCHS = 100
ASHA = {"name": "asha", "min_resource": 1, "reduction_factor": 3}
SCREEN = {"name": "screen", "min_resource": 1, "reduction_factor": 3}
SIDES = {  # label: (study name, sampler, pruner)
    "tpe + asha (mf)": ("mf", {"name": "tpe"}, ASHA),
    "tpe + asha (final)": ("final", {"name": "tpe", "multi_fidelity": False}, ASHA),
    "random + asha": ("random", {"name": "random"}, ASHA),
    "1-epoch": ("oneepoch", {"name": "random"}, {**ASHA, "max_resource": 2}),
}
SCREENING = {  # issue 27's candidates and ablations: replayed (replay.py), not run here by default
    # what search_spaces/resnet.yaml shipped until 2026-12-07: the 1-epoch baseline, known configurations queued first
    "1-epoch (known first)": ("oneepochk", {"name": "random"}, {**ASHA, "max_resource": 2}),
    "1/2-epoch": ("halfepoch", {"name": "random"}, {**ASHA, "min_resource": 0.5, "max_resource": 1}),
    "screen (prior)": ("screen", {"name": "prior"}, SCREEN),  # the known configurations in the pool
    "screen (uniform)": ("screenu", {"name": "random"}, SCREEN),  # ablation: the pool without them
    "screen (prior, 1/2)": ("screenh", {"name": "prior"}, {**SCREEN, "min_resource": 0.5}),  # first rung at half an epoch
    "screen (uniform, 1/2)": ("screenuh", {"name": "random"}, {**SCREEN, "min_resource": 0.5}),  # what it ships now
}
STRATEGY_SIDES = {**SIDES, **SCREENING}
KNOWN_IN_POOL = ("1-epoch (known first)", "screen (prior)", "screen (prior, 1/2)")  # sides whose space file lists the known configurations


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


def sweeper(folder: Path, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "sweeper", *args], cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sweeper {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")


def run_side(folder: Path, doc: dict, budget: int | None) -> list[optuna.trial.FrozenTrial]:
    space = write_space(folder / f"{doc['study']}.yaml", doc)
    sweeper(folder, "run", "--space", str(space), *(["--budget-epochs", str(budget)] if budget else []))
    return load(folder, doc["study"])


def load(folder: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{folder / 'studies.db'}").get_trials()


def recheck(folder: Path, study: str) -> tuple[float, float] | None:
    """The winner retrained with 2 more seeds: (mean, std) of its 3 runs."""
    if not any(t.state == TrialState.COMPLETE for t in load(folder, study)):
        return None
    sweeper(folder, "recheck", "--study", study, "--top", "1", "--seeds", "2")
    best = max((t for t in load(folder, study) if t.state == TrialState.COMPLETE and "recheck_of" not in t.user_attrs),
               key=lambda t: (t.value, -t.number))
    config = next(c for c in configurations(load(folder, study)) if c.first.number == best.number)
    return config.mean, config.std or 0.0


def epoch_times(folder: Path, study: str, trial) -> list[tuple[float, int]]:
    """(when it finished, epoch) for each whole epoch the trial trained itself: its workers'
    segments (several when a pruner paused it, at half an epoch too) plus each epoch's seconds
    from its metrics.csv (counted from the epoch's start, across a pause inside it)."""
    path = folder / "trials" / study / str(trial.number) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        seconds = {float(r["epoch"]): float(r["seconds"]) for r in csv.DictReader(f)}
    carried = trial.user_attrs.get(epoch_count.RESUMED_AFTER, 0)
    bounds = [carried] + trial.user_attrs.get("pauses", []) + [max(seconds, default=0)]
    out = []
    for (start, _), lo, hi in zip(trial.user_attrs.get("segments", []), bounds, bounds[1:]):
        t = start
        for e in range(math.floor(lo) + 1, math.floor(hi) + 1):
            t += seconds.get(e, 0.0) - (seconds.get(lo, 0.0) if lo > e - 1 else 0.0)  # begun before a pause at lo
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


def cell(values: list[float | None]) -> str:
    """median [min-max] over seeds; a seed with no COMPLETE trial yet counts as 0."""
    got = [v if v is not None else 0.0 for v in values]
    if len(got) == 1:
        return f"{got[0]:.4f}"
    return f"{statistics.median(got):.4f} [{min(got):.4f}-{max(got):.4f}]"


def test_of(folder: Path, study: str) -> float | None:
    """The test accuracy of the configuration the run returned, as `run` scored it (None: the
    data has no test split, or the run returned nothing)."""
    from sweeper.analyze.test_score import TEST_SCORE

    score = optuna.load_study(study_name=study, storage=f"sqlite:///{folder / 'studies.db'}").user_attrs.get(TEST_SCORE)
    return score.get("test") if score else None


def print_tests(tests: dict[str, list[float | None]]) -> None:
    """Test accuracy of each returned configuration per seed, and the paired difference from the
    1-epoch baseline's (same sampler seed)."""
    if not any(v is not None for values in tests.values() for v in values):
        return
    base = tests.get("1-epoch")
    print("\nTest accuracy of the configuration each run returned, per sampler seed"
          + ("; difference from 1-epoch with the same seed" if base else ""))
    for label, values in tests.items():
        line = f"{label:<30} " + " ".join("-" if v is None else f"{v:.4f}" for v in values)
        if base and label != "1-epoch" and len(values) == len(base):
            diffs = [(v or 0.0) - (b or 0.0) for v, b in zip(values, base)]
            line += f"   vs 1-epoch: {' '.join(f'{d:+.4f}' for d in diffs)} (median {statistics.median(diffs):+.4f})"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/caltech20"))
    parser.add_argument("--pretrained", default="../shared/data/pretrained/resnet18_caltech61_96px.pth")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="sampler seeds FIRST..FIRST+SEEDS-1 (more seeds later)")
    parser.add_argument("--recheck", action="store_true", help="retrain each run's winner with 2 more seeds")
    parser.add_argument("--n-min", type=int, action="append", default=[],
                        help="add a side: tpe + asha (mf) with this n_min (repeatable)")
    parser.add_argument("--sides", default=None,
                        help="comma-separated study names to run (grid, mf, final, random, oneepoch, mfK "
                             "for --n-min K); default: all")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sides = {**STRATEGY_SIDES, **{f"tpe + asha (mf, n_min {k})": (f"mf{k}", {"name": "tpe", "n_min": k}, ASHA)
                                  for k in args.n_min}}
    wanted = set(args.sides.split(",")) if args.sides else \
        {"grid", *(name for label, (name, _, _) in sides.items() if label not in SCREENING)}
    if unknown := wanted - {"grid", *(name for name, _, _ in sides.values())}:
        raise SystemExit(f"Error: --sides: unknown {sorted(unknown)}; valid: grid, "
                         + ", ".join(name for name, _, _ in sides.values()))
    sides = {label: side for label, side in sides.items() if side[0] in wanted}
    configs = manual_configs(args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.quick:
            args.model, args.size, args.epochs, args.pretrained = "test_resnet", 16, 2, False
            args.seeds = 1  # the flow, not the figures: one seed per side
            configs = manual_configs(args.epochs)[:4]
            data = make_image_folder(root / "data", classes=3, per_class=20)
            make_image_folder(root / "held_out", classes=3, per_class=6, seed=1, split=False)
            (root / "held_out").rename(data / "test")  # so that each run's answer is scored
        else:
            data = args.data.resolve()
            if isinstance(args.pretrained, str) and args.pretrained not in ("true", "false"):
                args.pretrained = str(Path(args.pretrained).resolve())
            else:
                args.pretrained = args.pretrained == "true"
        grid_epochs = len(configs) * args.epochs
        budget = max(args.epochs, grid_epochs // 4)
        rows = []  # (label, budget, [best at 1/4, 1/2, all per seed], retrained per seed, rechecks)
        tests: dict[str, list[float | None]] = {}  # label: the returned configuration's test accuracy per seed
        if "grid" in wanted:
            grid_doc = space_doc(args, data, "grid", configs)
            grid_doc["search"].update(n_trials=len(configs), sampler={"name": "random", "seed": 0}, pruner="none")
            grid_doc["enqueue"] = configs
            trials = run_side(root, grid_doc, None)
            marks = [grid_epochs // 4, grid_epochs // 2, grid_epochs]
            rows.append(("grid (manual configurations)", grid_epochs, [best_by_epochs(root, "grid", trials, marks)],
                         [epoch_count.retrained(trials)], [recheck(root, "grid")] if args.recheck else []))
            tests["grid (manual configurations)"] = [test_of(root, "grid")]
        marks = [budget // 4, budget // 2, budget]
        for label, (name, sampler, pruner) in sides.items():
            bests, retrained, rechecks = [], [], []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                doc = space_doc(args, data, f"{name}{seed}", configs)
                doc["search"].update(sampler={**sampler, "seed": seed}, pruner=pruner)
                if label in KNOWN_IN_POOL:
                    doc["enqueue"] = configs
                trials = run_side(root, doc, budget)
                tests.setdefault(label, []).append(test_of(root, doc["study"]))
                bests.append(best_by_epochs(root, doc["study"], trials, marks))
                retrained.append(epoch_count.retrained(trials))
                if args.recheck:
                    rechecks.append(recheck(root, doc["study"]))
                print(f"{label} seed {seed}: best {bests[-1]}, test {tests[label][-1]}", flush=True)
            rows.append((label, budget, bests, retrained, rechecks))
    print_tests(tests)
    print(f"\n{args.model} at {args.size} px, {args.epochs} epochs per trial; the grid's {len(configs)} "
          f"configurations take {grid_epochs} epochs, every other side gets {budget}; sampler seeds "
          f"{args.first_seed}..{args.first_seed + args.seeds - 1}. Best val_acc of a COMPLETE trial, median [min-max] over seeds, after")
    head = ["1/4 of budget", "1/2", "all"]
    print(f"{'side':<30} {'budget':>6} {head[0]:>24} {head[1]:>24} {head[2]:>24} {'retrained':>9}"
          + ("   recheck: winner mean ± std (3 runs)" if args.recheck else ""))
    for label, side_budget, bests, retrained, rechecks in rows:
        cells = [cell([b[i] for b in bests]) for i in range(3)]
        line = (f"{label:<30} {side_budget:>6} {cells[0]:>24} {cells[1]:>24} {cells[2]:>24} "
                f"{statistics.median(retrained):>9g}")
        if args.recheck:
            line += "   " + ", ".join("-" if r is None else f"{r[0]:.4f} ± {r[1]:.4f}" for r in rechecks)
        print(line)
    median_at = {label: statistics.median([b[2] or 0.0 for b in bests]) for label, _, bests, _, _ in rows}
    needed = ("tpe + asha (mf)", "grid (manual configurations)", "1-epoch", "random + asha")
    if not all(label in median_at for label in needed):
        print("target: not judged (--sides left out one of grid, mf, random, oneepoch)")
        return
    ours, grid = median_at["tpe + asha (mf)"], median_at["grid (manual configurations)"]
    others = max(median_at["1-epoch"], median_at["random + asha"])
    met = ours > others and ours >= grid
    print(f"target (mf median at its budget > 1-epoch and random + asha medians, and >= the grid's best "
          f"at all its epochs): {'met' if met else 'not met'} ({ours:.4f} vs {others:.4f} and {grid:.4f})")


if __name__ == "__main__":
    main()
