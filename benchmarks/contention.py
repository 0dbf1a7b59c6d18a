"""Two sweeps on one machine: training images/s of each against one sweep alone, measured side by
side in one run. Three cases, each a real `sweeper run` of one trial:

1. alone;
2. two at once sharing the cores (the host-wide worker registry, sweeper's default);
3. two at once, each with a registry of its own, so each takes every core (the old behaviour).

    python benchmarks/contention.py [--data ../shared/data/caltech20] [--model resnet18] [--size 96]
    python benchmarks/contention.py --quick     # a small generated dataset, seconds
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from sweeper.testing import make_image_folder, tiny_space, write_space


def space(folder: Path, data: Path, model: str, size: int, epochs: int, batch: int, pretrained) -> Path:
    doc = tiny_space(data, study="bench", model={"name": model, "pretrained": pretrained},
                     train={"epochs": epochs, "batch_size": batch, "schedule": "cosine",
                            "augment": "flip_crop", "precision": "auto", "lr": 0.01},
                     search={"n_trials": 1, "sampler": "random", "pruner": "none"}, space=None)
    doc["data"]["image_size"] = size
    return write_space(folder / "space.yaml", doc)


def start(folder: Path, spec: Path, registry: Path) -> subprocess.Popen:
    env = {**os.environ, "SWEEPER_CPU_REGISTRY": str(registry)}
    return subprocess.Popen([sys.executable, "-m", "sweeper", "run", "--space", str(spec)], cwd=folder,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def rate(folder: Path) -> float:
    """Mean training images/s over the epochs after the first (warm-up)."""
    rows = list(csv.DictReader(open(folder / "trials/bench/0/metrics.csv")))
    later = rows[1:] or rows
    return statistics.fmean(float(r["images_per_s"]) for r in later)


def run_sweeps(root: Path, name: str, n: int, shared: bool, args, data: Path, pretrained) -> list[float]:
    folders = [root / f"{name}{i}" for i in range(n)]
    procs = []
    for i, folder in enumerate(folders):
        folder.mkdir(parents=True)
        spec = space(folder, data, args.model, args.size, args.epochs, args.batch, pretrained)
        registry = root / ("registry" if shared else f"registry-{name}{i}")
        procs.append(start(folder, spec, registry))
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"sweep failed: {err[-2000:]}")
    return [rate(f) for f in folders]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--pretrained", default="false", help="false, true or a checkpoint path")
    parser.add_argument("--quick", action="store_true", help="tiny generated data and model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.quick:
            args.model, args.size, args.epochs, args.batch = "test_resnet", 16, 2, 8
            data = make_image_folder(root / "data", classes=3, per_class=20)
        else:
            data = (args.data or Path("../shared/data/caltech20")).resolve()
        pretrained = {"false": False, "true": True}.get(args.pretrained, args.pretrained)
        alone = run_sweeps(root, "alone", 1, True, args, data, pretrained)[0]
        fair = run_sweeps(root, "fair", 2, True, args, data, pretrained)
        greedy = run_sweeps(root, "greedy", 2, False, args, data, pretrained)
    print(f"\n{args.model} at {args.size} px, batch {args.batch}, {args.epochs} epochs, "
          f"{os.cpu_count()} cores; images/s of training, epochs after the first")
    print(f"{'case':<44} {'sweep A':>9} {'sweep B':>9} {'vs alone':>9}")
    print(f"{'one sweep alone':<44} {alone:9.1f} {'':>9} {1.0:9.2f}")
    for label, pair in (("two at once, sharing the cores (default)", fair),
                        ("two at once, each taking every core (old)", greedy)):
        print(f"{label:<44} {pair[0]:9.1f} {pair[1]:9.1f} {min(pair) / alone:9.2f}")
    print("vs alone: the slower sweep's images/s over the lone sweep's (fair share on 2 cores: 0.5)")


if __name__ == "__main__":
    main()
