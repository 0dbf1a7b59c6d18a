"""Does a replay (benchmarks/replay.py) decide as a real sweep does? A real `sweeper run`, then a
replay of that run's own curves, trial by trial.

    .venv/bin/python benchmarks/fidelity.py [--workers 2] [--strategy "random + asha"] [--budget 12]
    .venv/bin/python benchmarks/fidelity.py --data ../shared/data/caltech20 --model resnet18 --size 96 \\
        --pretrained ../shared/data/pretrained/resnet18_caltech61_96px.pth --epochs 8 --budget 24

The real run uses benchmarks/search.py's space file for the strategy (default: generated images,
test_resnet at 16 px, 3 epochs a trial: about 30 s). Its trials become a table, each trial a
configuration of its own: val_acc by epoch from the store, seconds from its metrics.csv. The
replay gets the same space file, budget and worker count, and the run's median start-up
(ask -> first step). For each trial it prints the real and the replayed decision (state,
rungs it paused at, reason, epochs), whether the sequence of decisions (starts, pauses,
promotions, the reserve's, ends) is the same, then whether the trials, the answer (`sweeper
best`) and the epochs trained agree. With one worker they must all agree (benchmarks/test_replay.py); with
more, a decision may differ where two trials reach a rung or the budget close together in time.
A replay that asks for an epoch the real run never trained fails that trial ("recorded: ...").
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import replay  # benchmarks/replay.py
from curves import FIELDS  # benchmarks/curves.py: the table's columns
from search import KNOWN_IN_POOL, STRATEGY_SIDES, manual_configs, space_doc  # benchmarks/search.py: the strategies' space files

from sweeper.search.asha import curve


def real_run(folder: Path, data: Path, strategy: str, seed: int, budget: int, workers: int, model: str = "test_resnet",
             size: int = 16, epochs: int = 3, pretrained: str | bool = False) -> tuple[dict, list, list[tuple]]:
    """`sweeper run` of the strategy in `folder`: its space file, its trials and the sequence of
    its decisions (read from its output as replay.Decisions writes a replay's down)."""
    import optuna

    args = argparse.Namespace(size=size, model=model, pretrained=pretrained, epochs=epochs)
    doc = space_doc(args, data, "real", manual_configs(epochs)[:4])
    if model == "test_resnet":
        doc["train"]["precision"] = "fp32"
    _, sampler, pruner = STRATEGY_SIDES[strategy]
    doc["search"].update(sampler={**sampler, "seed": seed}, pruner=pruner)
    if strategy in KNOWN_IN_POOL:
        doc["enqueue"] = manual_configs(epochs)[:4]
    from sweeper.testing import write_space

    space = write_space(folder / "real.yaml", doc)
    done = subprocess.run([sys.executable, "-m", "sweeper", "run", "--space", str(space), "--workers", str(workers),
                           "--budget-epochs", str(budget)], cwd=folder, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"sweeper run failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    trials = optuna.load_study(study_name="real", storage=f"sqlite:///{folder / 'studies.db'}").get_trials()
    return doc, trials, sequence(done.stdout)


def sequence(output: str) -> list[tuple]:
    """A run's decisions in order, from its progress lines (progress.LineProgress: `trial=N
    event=start ...`, `trial=N event=finish state=S ... reason="..."`, and its messages)."""
    log = replay.Decisions()
    for line in output.splitlines():
        if m := re.match(r"trial=(\d+) event=start", line):
            log.started(int(m[1]), 0, {}, 0)
        elif m := re.match(r'trial=(\d+) event=finish state=(\w+)[^"]*(?:reason="(.*)")?$', line):
            log.finished(int(m[1]), m[2], None, m[3])
        else:
            log.message(line)
    return log.log


def as_table(trials: list, path: Path) -> replay.Table:
    """Each real trial's curve as a configuration of its own (its values from the store, its
    seconds from metrics.csv, counted from the trial's start)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        w.writeheader()
        for t in trials:
            folder = Path(t.user_attrs["trial_dir"])
            params = json.loads((folder / "config.json").read_text())["params"]
            metrics = folder / "metrics.csv"
            seconds = ({float(r["epoch"]): float(r["seconds"]) for r in csv.DictReader(open(metrics))}
                       if metrics.is_file() else {})
            total = 0.0
            for epoch, value in curve(t).items():  # a part-epoch rung's value (0.5) too
                total += seconds.get(epoch, 1.0)
                w.writerow({"config": t.number, "origin": "real", "seed": 0, **params,
                            "milestones": json.dumps(params.get("milestones", "")), "epoch": epoch,
                            "val_acc": value, "val_balanced_acc": value, "test_acc": value, "seconds": total,
                            "status": "ok"})
    return replay.Table(path)


def decisions(trials: list) -> list[tuple]:
    """What the orchestrator decided about each trial, as the store records it."""
    return [(t.number, t.params, t.state.name, t.user_attrs.get("pauses"), t.user_attrs.get("reason"),
             t.user_attrs.get("epochs_run"), bool(t.user_attrs.get("finished_by_reserve")),
             dict(t.intermediate_values), t.value) for t in trials]


def replay_of(doc: dict, real: list, folder: Path, budget: int, workers: int,
              log: replay.Decisions | None = None) -> replay.Sweep:
    startup = statistics.median(t.user_attrs.get("startup_s", 1.0) for t in real if "startup_s" in t.user_attrs)
    return replay.sweep(as_table(real, folder / "real.csv"), doc, 0, budget, workers, startup, decisions=log)


def _show(d: tuple | None) -> str:
    return "-" if d is None else f"{d[2]}, {d[3] or []}, {d[4] or ''}, {d[5]}"


def main() -> int:
    from sweeper.analyze.ranking import configurations
    from sweeper.sweep import epochs
    from sweeper.testing import make_image_folder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategy", default="random + asha", choices=list(STRATEGY_SIDES))
    parser.add_argument("--seed", type=int, default=3, help="the sampler's seed")
    parser.add_argument("--budget", type=int, default=12, help="epochs (search.budget.epochs)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=None, help="an image folder (default: generated images)")
    parser.add_argument("--model", default="test_resnet")
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pretrained", default="false", help="true, false or a weights file")
    args = parser.parse_args()
    pretrained = {"true": True, "false": False}.get(args.pretrained, str(Path(args.pretrained).resolve()))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = args.data.resolve() if args.data else make_image_folder(folder / "data", classes=3, per_class=18)
        doc, real, real_order = real_run(folder, data, args.strategy, args.seed, args.budget, args.workers,
                                         args.model, args.size, args.epochs, pretrained)
        order = replay.Decisions()
        replayed = replay_of(doc, real, folder, args.budget, args.workers, order).trials
    print(f"{args.strategy}, sampler seed {args.seed}, budget {args.budget} epochs, {args.workers} worker(s), "
          f"{args.model} at {args.size} px, {args.epochs} epochs a trial")
    print(f"{'trial':>5}  {'real: state, paused at, reason, epochs':<58} replay")
    differ = 0
    ours, theirs = decisions(real), decisions(replayed)
    for i in range(max(len(ours), len(theirs))):
        a = ours[i] if i < len(ours) else None
        b = theirs[i] if i < len(theirs) else None
        differ += a != b
        print(f"{i:>5}  {_show(a):<58} {'same' if a == b else _show(b)}")
    first = next((i for i, (a, b) in enumerate(zip(real_order, order.log)) if a != b),
                 None if len(real_order) == len(order.log) else min(len(real_order), len(order.log)))
    print(f"sequence of decisions (starts, pauses, promotions, reserve, ends): {len(real_order)} real, "
          f"{len(order.log)} replayed, " + ("the same" if first is None else
                                           f"first different at step {first + 1}: {real_order[first:first + 1]} "
                                           f"real, {order.log[first:first + 1]} replayed"))
    best = [c[0].first.number if c else None for c in (configurations(real), configurations(replayed))]
    print(f"trials: {len(real)} real, {len(replayed)} replayed; decisions that differ: {differ}; answer: trial "
          f"{best[0]} real, {best[1]} replayed; epochs trained: {epochs.trained(real)} real, "
          f"{epochs.trained(replayed)} replayed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
