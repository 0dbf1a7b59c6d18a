"""What the report's "What the best model gets wrong" section costs: one validation pass of the
best checkpoint. Measured in one run: a one-trial sweep that keeps its checkpoint, then
`sweeper report` without the section (`--no-errors`) and with it, alternating, medians of
`--repeats`; beside them `sweeper ensemble --top 1`, which is one validation pass of the same
checkpoint and its own start-up.

    python benchmarks/report_errors.py --data ../shared/data/caltech20 --model resnet18 --size 96 \\
        --pretrained ../shared/data/pretrained/resnet18_caltech61_96px.pth
    python benchmarks/report_errors.py --quick   # generated images, test_resnet at 16 px (a test runs it)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sweeper.testing import make_image_folder, tiny_space, write_space


def _sweeper(folder: Path, *args: str) -> float:
    """Seconds of one `sweeper` command run in `folder`."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sweeper", *args], cwd=folder, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"sweeper {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return took


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="image folder (root/train/<class>, root/val/<class>)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--pretrained", type=Path, help="a local checkpoint to start from (else random weights)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.quick:
            args.data, args.model, args.size, args.repeats = make_image_folder(root / "data", 3, 30), "test_resnet", 16, 1
        elif args.data is None:
            parser.error("--data is required (or --quick)")
        pretrained = str(args.pretrained.resolve()) if args.pretrained else False
        space = write_space(root / "space.yaml", tiny_space(
            args.data.resolve(), study="errors", data={"root": str(args.data.resolve()), "image_size": args.size},
            model={"name": args.model, "pretrained": pretrained},
            train={"epochs": 1, "batch_size": 64, "precision": "auto"},
            search={"n_trials": 1, "sampler": {"name": "random", "seed": 0}, "pruner": "none"},
            space={"lr": [0.01]}))
        _sweeper(root, "run", "--space", str(space), "--keep-checkpoints", "1")
        without, with_errors = [], []
        for _ in range(args.repeats):  # alternating, so drift on a shared machine hits both
            without.append(_sweeper(root, "report", "--study", "errors", "--no-errors", "--out", "a.html"))
            with_errors.append(_sweeper(root, "report", "--study", "errors", "--out", "b.html"))
        one_pass = statistics.median(_sweeper(root, "ensemble", "--study", "errors", "--top", "1", "--gpus", "none")
                                     for _ in range(args.repeats))
        html = (root / "b.html").read_text()
        assert "Cannot be shown" not in html.split("What the best model gets wrong</h2>")[1], "no error section"
        val = sum(1 for p in (args.data / "val").rglob("*") if p.is_file())
    a, b = statistics.median(without), statistics.median(with_errors)
    print(f"\n{cpu_model()}, {os.cpu_count()} cores; {args.model} at {args.size} px, {val} validation images; "
          f"medians of {args.repeats}")
    print(f"{'case':<44} {'seconds':>8} {'/ without':>10}")
    print(f"{'sweeper report --no-errors':<44} {a:8.2f} {1:10.2f}")
    print(f"{'sweeper report (with the error section)':<44} {b:8.2f} {b / a:10.2f}")
    print(f"{'sweeper ensemble --top 1 (one validation pass)':<44} {one_pass:8.2f} {one_pass / a:10.2f}")
    print(f"the section's cost: {b - a:.2f} s")


if __name__ == "__main__":
    main()
