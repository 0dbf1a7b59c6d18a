"""What the sweep machinery costs, apart from training. Measured in one run:

1. per trial, from real sweeps (a built-in dataset, cached): ask -> first training step
   (`startup_s`), the orchestrator's handling of each epoch's report (`report_ms`: store write +
   pruner + reply), and last epoch -> tell (`finish_s`: checkpoint, worker exit, attributes);
   with the warm fork server (default) against a fresh interpreter per trial;
2. `sweeper report` on a generated study of 1,000 trials (target <= 15 s);
3. the sampler's time per trial (ask + suggest) at 1,000 trials, as `run` builds them: TPE
   (multi-fidelity, the default), TPE on finished trials only, and random.

    python benchmarks/overhead.py             # about 3 minutes on a 2-core CPU
    python benchmarks/overhead.py --quick     # smaller: 2 one-epoch trials per sweep, a 50-trial study
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

import optuna

from sweeper.spec.sweep_spec import parse_spec
from sweeper.testing import make_study, tiny_space, write_space

SPACE = {"lr": {"low": 1e-4, "high": 1.0, "log": True}, "batch_size": [32, 64, 128],
         "frozen_stages": {"low": -1, "high": 4}}


def sweep_costs(folder: Path, trials: int, epochs: int, fork_server: bool) -> dict[str, float]:
    """Median per-trial costs of a real sweep, over every trial but the first (which pays the
    dataset decode and the fork server's own start)."""
    folder.mkdir(parents=True)
    doc = tiny_space(None, study="costs", model={"name": "resnet10t", "pretrained": False},
                     train={"epochs": epochs, "batch_size": 64, "lr": 0.05},
                     search={"n_trials": trials, "sampler": {"name": "random", "seed": 0}, "pruner": "none"},
                     space={"label_smoothing": {"low": 0.0, "high": 0.2}})
    doc["data"] = {"builtin": "digits", "image_size": 32}
    space = write_space(folder / "space.yaml", doc)
    env = {**os.environ, "SWEEPER_FORK_SERVER": "1" if fork_server else "0"}
    done = subprocess.run([sys.executable, "-m", "sweeper", "run", "--space", str(space)], cwd=folder,
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sweep failed:\n{done.stderr[-3000:]}")
    study = optuna.load_study(study_name="costs", storage=f"sqlite:///{folder / 'studies.db'}")
    later = sorted(study.trials, key=lambda t: t.number)[1:]
    return {key: statistics.median(t.user_attrs[key] for t in later)
            for key in ("startup_s", "report_ms", "finish_s")}


def report_seconds(folder: Path, n: int) -> tuple[float, float]:
    """(seconds to generate the study, seconds of `sweeper report` on it)."""
    folder.mkdir(parents=True)
    storage = f"sqlite:///{folder / 'studies.db'}"
    start = time.perf_counter()
    make_study(storage, "big", complete=int(n * 0.6), pruned=int(n * 0.35), failed=n - int(n * 0.6) - int(n * 0.35),
               epochs=10)
    generated = time.perf_counter() - start
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sweeper", "report", "--study", "big", "--storage", storage],
                          cwd=folder, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"report failed:\n{done.stderr[-3000:]}")
    return generated, took


SAMPLERS = {"tpe (multi-fidelity)": "tpe", "tpe (multi_fidelity: false)": {"name": "tpe", "multi_fidelity": False},
            "random": "random"}


def sampler_ms(folder: Path, sampler: str | dict, asks: int) -> float:
    """Mean ms of ask + suggest on the generated study (each asked trial is then told FAIL, so the
    history stays the same size)."""
    doc = tiny_space(None, study="big", search={"sampler": sampler}, space=SPACE)
    doc["data"] = {"builtin": "digits"}
    spec = parse_spec(doc, "overhead")
    study = optuna.load_study(study_name="big", storage=f"sqlite:///{folder / 'studies.db'}",
                              sampler=spec.sampler())
    took = []
    for _ in range(asks):
        start = time.perf_counter()
        trial = study.ask()
        spec.space.suggest(trial)
        took.append(time.perf_counter() - start)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return 1000 * statistics.fmean(took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000, help="size of the generated study")
    parser.add_argument("--sweep-trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.sweep_trials, args.epochs = 50, 2, 1
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        warm = sweep_costs(root / "warm", args.sweep_trials, args.epochs, True)
        cold = sweep_costs(root / "cold", args.sweep_trials, args.epochs, False)
        generated, report = report_seconds(root / "big", args.trials)
        samplers = {label: sampler_ms(root / "big", sampler, 5) for label, sampler in SAMPLERS.items()}
    print(f"\n{os.cpu_count()} cores; per trial: median over trials 2..{args.sweep_trials} of a "
          f"sweep on built-in digits (resnet10t, 32 px, {args.epochs} epochs)")
    print(f"{'cost':<42} {'fork server':>12} {'fresh python':>13} {'ratio':>7}")
    for key, label in (("startup_s", "ask -> first step (s)"), ("report_ms", "epoch report round trip (ms)"),
                       ("finish_s", "last epoch -> tell (s)")):
        print(f"{label:<42} {warm[key]:12.3f} {cold[key]:13.3f} {warm[key] / cold[key]:7.2f}")
    print(f"\nstudy of {args.trials} trials (generated in {generated:.1f} s):")
    print(f"{'sweeper report':<42} {report:10.1f} s   (target <= 15 s)")
    for name, ms in samplers.items():
        print(f"{name + ': ask + suggest':<42} {ms:10.1f} ms per trial")


if __name__ == "__main__":
    main()
