"""Learning-curve tables: every configuration of a fixed design trained once per seed through
sweeper's own worker, with val and test accuracy and seconds every half epoch. Recorded once
(hours of CPU), replayed many times (benchmarks/replay.py).

    .venv/bin/python benchmarks/tasks.py                       # materialise the tasks first
    nice -n 19 .venv/bin/python benchmarks/curves.py --task caltech20 [--seeds 2] [--epochs 8]
    .venv/bin/python benchmarks/curves.py --quick              # 2 configurations x 2 epochs, generated images

The design (--design-seed 0), in the space of benchmarks/search.py (lr 0.025-0.4 log, batch
32-256, frozen_stages -1..4, step (with milestones) or cosine, flip_crop or swin_randaug):
- the known configurations: CONTEXT.md's twelve manual runs, milestones scaled to --epochs;
- mutations of them, after PriorBand's rule (NePS defaults): each hyperparameter resampled with
  probability 0.5, lr from a normal of std 0.25 around it in the normalised (log) range, clipped;
  batch size, frozen stages (which NePS would move as integers, by the normal), schedule,
  milestones and augmentation to another value;
- a space-filling sample of the rest: scrambled Sobol points in the normalised space.
Each configuration trains --seeds times (training seeds 0, 1, ...), --epochs epochs, resnet18
at 96 px from the shared backbone (../shared/data/pretrained), `train.eval_every: 0.5`, the test
split scored beside validation (`record_test`; a sweep never does that).

The table, `benchmarks/curves/<task>.csv`, has one row per (configuration, seed, half epoch):
config, origin (known / mutation / uniform), seed, the configuration's values, epoch, val_acc,
val_balanced_acc, test_acc, test_balanced_acc, train_loss, lr, seconds (since the run started:
training and validation, without the test scoring), status (ok, or why the run ended early).
Rows are appended a whole run at a time: a killed recording goes on where it stopped, at the
first (configuration, seed) it lacks. A second recording of the same task with `--from-end` takes
the runs from the last one backwards (one core each when the CPU registry shares two): both read
the table before each run, so they stop where they meet. The header of `<task>.meta.json` says what was recorded,
where, and how long it took.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from search import manual_configs, space_doc  # benchmarks/search.py: the same space and known runs

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT.parent / "shared" / "data" / "pretrained" / "resnet18_caltech61_96px.pth"
FIELDS = ["config", "origin", "seed", "lr", "batch_size", "frozen_stages", "schedule", "milestones",
          "augment", "epoch", "val_acc", "val_balanced_acc", "test_acc", "test_balanced_acc", "train_loss",
          "lr_now", "seconds", "status"]
KNOBS = ("lr", "batch_size", "frozen_stages", "schedule", "milestones", "augment")


# --- the design ----------------------------------------------------------------------------


class Space:
    """The design's knobs in a normalised [0, 1] box: lr on a log scale, the rest by their
    index among the choices (frozen_stages as an ordered integer)."""

    def __init__(self, doc: dict):
        s = doc["space"]
        self.lr = (math.log(s["lr"]["low"]), math.log(s["lr"]["high"]))
        self.batch = list(s["batch_size"])
        self.frozen = list(range(s["frozen_stages"]["low"], s["frozen_stages"]["high"] + 1))
        self.schedules = list(s["schedule"])
        self.milestones = [list(m) for m in s["milestones"]["choices"]]
        self.augments = list(s["augment"])

    def encode(self, c: dict) -> np.ndarray:
        """A configuration -> a point (milestones count only under a step schedule)."""
        def idx(choices, v):
            return choices.index(v) / max(1, len(choices) - 1)

        ms = idx(self.milestones, c["milestones"]) if c["schedule"] == "step" else 0.5
        return np.array([(math.log(c["lr"]) - self.lr[0]) / (self.lr[1] - self.lr[0]),
                         idx(self.batch, c["batch_size"]), idx(self.frozen, c["frozen_stages"]),
                         idx(self.schedules, c["schedule"]), ms, idx(self.augments, c["augment"])])

    def decode(self, x: np.ndarray) -> dict:
        def pick(choices, u):
            return choices[min(len(choices) - 1, int(u * len(choices)))]

        c = {"lr": round(math.exp(self.lr[0] + float(x[0]) * (self.lr[1] - self.lr[0])), 5),
             "batch_size": pick(self.batch, x[1]), "frozen_stages": pick(self.frozen, x[2]),
             "schedule": pick(self.schedules, x[3]), "augment": pick(self.augments, x[5])}
        if c["schedule"] == "step":
            c["milestones"] = pick(self.milestones, x[4])
        return c


def mutate(space: Space, c: dict, rng: np.random.Generator) -> dict:
    """PriorBand's mutation: each knob resampled with probability 0.5; lr from N(x, 0.25) in the
    normalised space (clipped), categoricals and integers to another value."""
    out = dict(c)
    if rng.random() < 0.5:
        x = (math.log(c["lr"]) - space.lr[0]) / (space.lr[1] - space.lr[0])
        x = float(np.clip(rng.normal(x, 0.25), 0, 1))
        out["lr"] = round(math.exp(space.lr[0] + x * (space.lr[1] - space.lr[0])), 5)
    for key, choices in (("batch_size", space.batch), ("frozen_stages", space.frozen),
                         ("schedule", space.schedules), ("augment", space.augments)):
        if rng.random() < 0.5:
            out[key] = rng.choice([v for v in choices if v != c[key]]).item()
    if out["schedule"] == "step":
        if "milestones" not in out or rng.random() < 0.5:
            others = [m for m in space.milestones if m != out.get("milestones")]
            out["milestones"] = others[rng.integers(len(others))]
    else:
        out.pop("milestones", None)
    return out


def key(c: dict) -> str:
    return json.dumps({k: c.get(k) for k in KNOBS}, sort_keys=True)


def design(doc: dict, epochs: int, mutations: int, uniform: int, seed: int) -> list[tuple[str, dict]]:
    """(origin, configuration) pairs: known, then mutations, then Sobol; no configuration twice."""
    from scipy.stats import qmc

    space = Space(doc)
    rng = np.random.default_rng(seed)
    out, seen = [], set()

    def add(origin: str, c: dict) -> bool:
        if key(c) in seen:
            return False
        seen.add(key(c))
        out.append((origin, c))
        return True

    known = manual_configs(epochs)
    for c in known:
        add("known", c)
    while sum(o == "mutation" for o, _ in out) < mutations:
        add("mutation", mutate(space, known[rng.integers(len(known))], rng))
    points = qmc.Sobol(d=6, scramble=True, seed=seed).random(2 ** math.ceil(math.log2(max(2, uniform * 2))))
    for x in points:
        if sum(o == "uniform" for o, _ in out) == uniform:
            break
        add("uniform", space.decode(x))
    return out


# --- recording -----------------------------------------------------------------------------


def done_runs(table: Path) -> set[tuple[int, int]]:
    if not table.is_file():
        return set()
    with open(table, newline="") as f:
        return {(int(r["config"]), int(r["seed"])) for r in csv.DictReader(f)}


def record_run(spec, number: int, config: dict, seed: int, cache: Path, work: Path) -> tuple[list[dict], str]:
    """Train one configuration with one seed through `python -m sweeper.train.worker`; returns its
    validation records (every half epoch) and its status."""
    import dataclasses

    from sweeper.spec.trial_config import resolve

    values = {k: v for k, v in config.items() if k in spec.space.names}
    trial = resolve(spec, number, values, work, cache)
    trial = dataclasses.replace(trial, seed=seed, record_test=True, eval_every=0.5,
                                trial_dir=str(work / f"{number}-{seed}"))
    path = trial.save()
    epochs = trial.epochs
    proc = subprocess.run([sys.executable, "-m", "sweeper.train.worker", str(path)],
                          input="continue\n" * epochs, capture_output=True, text=True)
    records, status = [], None
    for line in proc.stdout.splitlines():
        event = json.loads(line)
        if event["event"] in ("eval", "epoch"):
            records.append(event)
        elif event["event"] == "nonfinite":
            status = "non-finite loss"
        elif event["event"] == "fail":
            status = "fail: " + event["reason"][:200]
    if status is None:
        status = "ok" if records and records[-1]["epoch"] == epochs else f"exit {proc.returncode}: {proc.stderr[-200:]}"
    return records, status


def rows_of(number: int, origin: str, config: dict, seed: int, records: list[dict], status: str) -> list[dict]:
    rows, test_seconds = [], 0.0
    for r in records:
        test_seconds += r.get("test_seconds", 0.0)
        rows.append({"config": number, "origin": origin, "seed": seed,
                     **{k: json.dumps(config[k]) if k == "milestones" else config.get(k, "") for k in KNOBS
                        if k in config},
                     "epoch": r["epoch"], **{k: round(r[k], 5) for k in
                                             ("val_acc", "val_balanced_acc", "test_acc", "test_balanced_acc",
                                              "train_loss")},
                     "lr_now": r["lr"], "seconds": r["cumulative_seconds"] - test_seconds, "status": status})
    if not rows:  # a run that never validated still says so, and is not trained again
        rows.append({"config": number, "origin": origin, "seed": seed, "epoch": 0, "status": status,
                     **{k: json.dumps(config[k]) if k == "milestones" else config.get(k, "") for k in KNOBS
                        if k in config}})
    return rows


def with_cumulative_seconds(records: list[dict]) -> list[dict]:
    """The worker's `seconds` restart every epoch; the table's count from the run's start."""
    total, out = 0.0, []
    for r in records:
        whole = float(r["epoch"]).is_integer()
        out.append({**r, "cumulative_seconds": total + r["seconds"]})
        if whole:
            total += r["seconds"]
    return out


def append(table: Path, rows: list[dict]) -> bool:
    """Appends one run's rows, unless the other lane appended that run first (they met on it)."""
    with open(table, "a", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # two lanes may append to one table
        if {(int(r["config"]), int(r["seed"])) for r in rows} & done_runs(table):
            return False
        writer = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        if f.tell() == 0:
            writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    return True


def write_meta(path: Path, meta: dict, session: dict) -> None:
    """Writes this lane's session into the meta file as it is on disk now, keeping the other lane's."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = json.loads(path.read_text()) if path.is_file() else meta
        sessions = [s for s in current["sessions"] if s.get("started") != session["started"]
                    or s.get("lane") != session["lane"]]
        path.write_text(json.dumps({**current, "sessions": [*sessions, session]}, indent=1))


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{model}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", help="a folder under --data (benchmarks/tasks.py writes them)")
    parser.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "curves")
    parser.add_argument("--work", type=Path, default=None, help="trial folders (default: a temporary one)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--mutations", type=int, default=18)
    parser.add_argument("--uniform", type=int, default=18)
    parser.add_argument("--design-seed", type=int, default=0)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--pretrained", default=str(PRETRAINED))
    parser.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs")
    parser.add_argument("--from-end", action="store_true",
                        help="take the runs still to do from the last backwards (a second lane on the same table)")
    parser.add_argument("--quick", action="store_true", help="generated images, test_resnet, 2 x 2 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        return quick(args)
    if not args.task or not (args.data / args.task / "train").is_dir():
        print(f"Error: task folder {args.data / str(args.task)} not found; run benchmarks/tasks.py "
              "first and pass --task NAME", file=sys.stderr)
        return 2
    return record(args, args.data / args.task, args.out / f"{args.task}.csv")


def record(args, data: Path, table: Path) -> int:
    from sweeper.spec.sweep_spec import parse_spec
    from sweeper.sweep import setup

    doc = space_doc(argparse.Namespace(size=args.size, model=args.model, pretrained=args.pretrained,
                                       epochs=args.epochs), data, "curves", manual_configs(args.epochs))
    if args.quick:
        doc["train"]["precision"] = "fp32"
    spec = parse_spec(doc, "curves")
    runs = design(doc, args.epochs, args.mutations, args.uniform, args.design_seed)
    table.parent.mkdir(parents=True, exist_ok=True)
    have = done_runs(table)
    todo = [(n, origin, c, s) for n, (origin, c) in enumerate(runs) for s in range(args.seeds) if (n, s) not in have]
    if getattr(args, "from_end", False):
        todo.reverse()
    meta_path = table.with_suffix(".meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {
        "task": data.name, "command": " ".join(sys.argv), "machine": machine(), "runs": len(runs) * args.seeds,
        "design": [{"config": n, "origin": o, **c} for n, (o, c) in enumerate(runs)], "sessions": []}
    print(f"{data.name}: {len(runs)} configurations x {args.seeds} seeds; {len(have)} runs recorded, "
          f"{len(todo)} to go", flush=True)
    work_root = args.work or Path(tempfile.mkdtemp(prefix="curves-"))
    cache = setup.prepare_data(spec, work_root)
    session = {"started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "runs": 0, "hours": 0.0,
               "machine": machine(), "lane": "from the end" if getattr(args, "from_end", False) else "from the start"}
    started = time.time()
    for n, origin, c, seed in todo[: args.max_runs]:
        if (n, seed) in done_runs(table):  # the other lane recorded it meanwhile
            continue
        t0 = time.time()
        records, status = record_run(spec, n, c, seed, cache, work_root)
        if not records and status.startswith("exit"):
            # a worker that never validated and did not say why is broken code, not a datum
            print(f"Error: config {n} seed {seed} did not start training ({status.strip()}); nothing recorded",
                  file=sys.stderr)
            return 1
        if not append(table, rows_of(n, origin, c, seed, with_cumulative_seconds(records), status)):
            continue
        session.update(runs=session["runs"] + 1, hours=round((time.time() - started) / 3600, 3))
        write_meta(meta_path, meta, session)  # after every run: a killed session is counted too
        last = records[-1] if records else {}
        print(f"config {n} ({origin}) seed {seed}: {status}, val {last.get('val_acc', float('nan')):.3f} "
              f"test {last.get('test_acc', float('nan')):.3f}, {time.time() - t0:.0f} s "
              f"[{len(done_runs(table))}/{len(runs) * args.seeds}]", flush=True)
    return 0


def quick(args) -> int:
    from sweeper.testing import make_image_folder

    with tempfile.TemporaryDirectory() as tmp:
        data = make_image_folder(Path(tmp) / "quick", classes=3, per_class=24)
        (data / "val").rename(data / "test")
        make_image_folder(Path(tmp) / "val", classes=3, per_class=9, seed=1, split=False)
        (Path(tmp) / "val").rename(data / "val")
        args.epochs, args.seeds, args.mutations, args.uniform = 2, 1, 1, 0
        args.model, args.size, args.pretrained = "test_resnet", 16, False
        args.max_runs = 2
        table = Path(tmp) / "quick.csv"
        record(args, data, table)
        with open(table, newline="") as f:
            rows = list(csv.DictReader(f))
        print("config seed epoch val_acc test_acc seconds status")
        for r in rows:
            print(r["config"], r["seed"], r["epoch"], r["val_acc"], r["test_acc"], r["seconds"], r["status"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
