"""Replay: sweeper's strategies against recorded learning curves, many optimizer seeds in minutes.

    .venv/bin/python benchmarks/replay.py [--tasks caltech20,...] [--seeds 20] [--workers 2] [--jobs 2]
    .venv/bin/python benchmarks/replay.py --quick        # benchmarks/curves/quick.csv, 3 seeds, seconds
    .venv/bin/python benchmarks/replay.py --record-quick # records benchmarks/curves/quick.csv again

What runs is sweeper's own orchestrator (sweep/orchestrator.py) with the study, sampler, pruner,
asha promotion, budget reserve and epoch budget that `sweeper run` builds from a space file
(setup.create_study, the same SweepSpec). The store is optuna's in-memory one: store.budget_lock
locks an SQLite URL with a file (a temporary folder on tmpfs holds it and the trial folders) and
only reads the storage's engine, which this one has as None; it makes the same decisions as an
SQLite file (`sqlite=True`; a test compares them) about 30x faster. Only the workers are simulated:

- `TableLauncher` stands in for fork_server.Launcher (the orchestrator's `launcher` argument).
  Its `TableWorker` reads the trial's config.json like a real worker, maps the trial's values to
  a recorded configuration, and speaks the worker's protocol from the table's curve: start,
  first_step, resumed (a promoted trial's earlier epochs), eval (when train.eval_every < 1),
  epoch (val_acc, val_balanced_acc, seconds of that epoch) waiting for the orchestrator's
  continue/stop, then value and complete, or stopped; nonfinite / fail where the recording
  ended so. It writes resume.pt (holding its epoch) where a real worker saves its state, since
  promotion checks for that file.
- `SimulatedEvents` replaces the orchestrator's event queue: every worker's next event carries a
  simulated time (launch time + start-up + the table's seconds since the epoch it resumed
  from), and `get` hands out the earliest, advancing the clock. So K workers interleave as they
  would in real time, and nothing sleeps. A worker waiting for its continue/stop has no next
  event until the orchestrator replies (which it does while handling the epoch, as for real).
  worker_handle's relay thread still starts; it finds the simulated worker's stdout empty, and
  its end-of-output is ignored (the worker announces its own end, in order).
- The orchestrator's clock is not simulated (time.monotonic and time.time are left alone): in
  these replays no decision reads it (see Fidelity), so event order is all that matters, and
  timestamps in the store (segments, startup_s) are simply the replay's own.

Mapping a suggestion to the table: the nearest recorded configuration in the normalised box of
curves.Space (lr on a log scale, the rest by index), exact matches first. The sampler keeps the
space a real run has (restricting it to categorical choices of the design would change what
TPE models: a 48-way categorical instead of six knobs), and the known configurations, which
the grid and enqueued trials use, are in the table exactly. The price: a random or TPE point
between design points trains as its neighbour. `mapped_distance` in the results says how far.
By default (`--mapping unused`) the neighbour is the nearest configuration no earlier trial of
the replay trains as (all used: the nearest): in a real run distinct suggestions train distinct
configurations, while the nearest of all 48 repeats one in about one screened trial of four at
1/2 of the grid's epochs, as drawing from 48 points with replacement would, which penalises
strategies that screen many. `--mapping nearest` is the sensitivity check.

A trial's curve is one of the table's training seeds, drawn from (optimizer seed, trial
number): real trials all train with train.seed 0, but rerunning a study does not give the same
curves on a GPU, and a benchmark that drew seed 0 for every trial would measure one noise
realisation only. The grid therefore also varies with the optimizer seed, which is what makes
paired differences meaningful.

What is measured for each (task, strategy, budget, optimizer seed): the configuration `sweeper
best` returns (analyze/ranking.configurations()[0]) and its TEST accuracy from the table at the
epoch whose weights the checkpoint holds (value_epoch): the configuration's, the mean over the
table's training seeds (primary: one seed's differs from the other's by about a point, as much
as the effects measured), and the returned run's own seed (`test_checkpoint`); its val value; epochs trained (sweep/epochs.trained: the budget's own count);
configurations screened (trials that trained to a rung, half-epoch ones included) and the distinct recorded configurations
they trained as; simulated hours.

Fidelity: where a replay can decide differently from a real run of the same curves.
- Time: nothing in these replays depends on the clock. No --timeout (reserve.tightest's time
  plan and the deadline are off), no trial_timeout, heartbeats off (one orchestrator). With a
  timeout the reserve would turn seconds into epochs, and the orchestrator's clock would have
  to be simulated too; this replay does not support --timeout.
- Order with K > 1 workers: asha promotes or pauses on the values recorded at a rung *so far*,
  the reserve counts the trials training *now*. The replay orders events by the table's
  seconds; a real run adds start-up (fork, data loading: `--startup-s`, default 2 s), resume
  costs, and contention between workers, which shifts which trial reaches a rung first. With
  K = 1 there is no interleaving: decisions depend only on values, so a replay makes the same
  decisions as a real run on the same curves (benchmarks/test_replay.py checks this against
  real `sweeper run`s; benchmarks/fidelity.py shows a real run and its replay side by side,
  with any number of workers).
- Ties: two events at the same simulated time go to the lower slot first.
- Curves: a sampled point trains as its nearest recorded neighbour; training noise is the
  table's 2+ seeds, not a fresh run's.
- Half-epoch evaluations are emitted when train.eval_every is 0.5 but the orchestrator only
  acts on whole epochs today.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import itertools
import json
import math
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Collection, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curves import Space  # benchmarks/curves.py: the design's normalised box
from search import KNOWN_IN_POOL, STRATEGY_SIDES, space_doc  # benchmarks/search.py: the strategies and their space file

from sweeper.sweep.progress import SweepProgress

ROOT = Path(__file__).resolve().parents[1]
CURVES = ROOT / "benchmarks" / "curves"
QUICK = CURVES / "quick.csv"
BUDGETS = ((1, 8), (1, 4), (1, 2))  # fractions of the grid's epochs
GRID = "grid (known, full)"
# how a suggestion maps to the table: "unused" as a real run, where distinct suggestions train
# distinct configurations (the nearest of all repeats one in about 1 screened trial of 4 at 1/2,
# as drawing 48 points with replacement would); "nearest" the sensitivity check
MAPPINGS = ("unused", "nearest")
BASELINE = "1-epoch"
STRATEGIES = [GRID, *STRATEGY_SIDES]  # search.py's sides (tpe + asha, random + asha, 1-epoch) and screening candidates
SCORES = ("val_acc", "val_balanced_acc", "test_acc")


# --- the table -----------------------------------------------------------------------------


@dataclasses.dataclass
class Curve:
    records: list[dict[str, float]]  # every evaluation, by epoch (0.5, 1, 1.5, ...)
    status: str

    def at(self, epoch: float) -> dict[str, float] | None:
        return next((r for r in self.records if r["epoch"] == epoch), None)

    def seconds_at(self, epoch: float) -> float:
        # a part-epoch rung of a one-step epoch was judged at its end (TableWorker._script)
        return 0.0 if epoch == 0 else (self.at(epoch) or self.at(math.ceil(epoch)))["seconds"]


class Table:
    """A learning-curve table (benchmarks/curves.py): configurations, their curves by seed."""

    def __init__(self, path: Path):
        self.path, self.task = path, path.stem
        self.configs: dict[int, dict[str, Any]] = {}
        self.origins: dict[int, str] = {}
        runs: dict[tuple[int, int], list[dict[str, str]]] = {}
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                n = int(row["config"])
                if n not in self.configs:
                    c = {"lr": float(row["lr"]), "batch_size": int(row["batch_size"]),
                         "frozen_stages": int(row["frozen_stages"]), "schedule": row["schedule"],
                         "augment": row["augment"]}
                    if row["schedule"] == "step":
                        c["milestones"] = json.loads(row["milestones"])
                    self.configs[n], self.origins[n] = c, row["origin"]
                runs.setdefault((n, int(row["seed"])), []).append(row)
        self.curves: dict[tuple[int, int], Curve] = {}
        for k, rows in runs.items():
            records = [{"epoch": _epoch(r["epoch"]), **{s: float(r[s]) for s in SCORES}, "seconds": float(r["seconds"])}
                       for r in rows if r.get("val_acc")]
            self.curves[k] = Curve(sorted(records, key=lambda r: r["epoch"]), rows[-1]["status"])
        self.seeds = sorted({s for _, s in self.curves})
        self.epochs = int(max(r["epoch"] for c in self.curves.values() for r in c.records))
        # only configurations with a curve for every seed are replayed (a recording in progress)
        self.configs = {n: c for n, c in self.configs.items() if all((n, s) in self.curves for s in self.seeds)}
        self.known = [n for n in self.configs if self.origins[n] == "known"]

    def doc(self, study: str) -> dict:
        """The space file a real run of this task would use (benchmarks/search.py's)."""
        args = argparse.Namespace(size=96, model="resnet18", pretrained=False, epochs=self.epochs)
        return space_doc(args, Path("/nonexistent-replay-data"), study, [self.configs[n] for n in self.known])

    def best_test(self, numbers) -> tuple[int, float]:
        """The configuration with the best test accuracy at the last epoch, averaged over seeds
        (the oracle no strategy can see)."""
        def mean(n: int) -> float:
            ends = [c.records[-1]["test_acc"] if c.records and c.records[-1]["epoch"] == self.epochs else 0.0
                    for c in (self.curves[(n, s)] for s in self.seeds)]
            return statistics.fmean(ends)

        best = max(numbers, key=lambda n: (mean(n), -n))
        return best, mean(best)

    def spearman(self, at: float) -> float:
        """Spearman's rho between val_acc at `at` epochs and at the last epoch, over every run."""
        from scipy.stats import spearmanr

        pairs = [(c.at(at)["val_acc"], c.records[-1]["val_acc"]) for (n, _), c in self.curves.items()
                 if n in self.configs and c.records and c.at(at) is not None and c.records[-1]["epoch"] == self.epochs]
        if len(pairs) < 3:
            return math.nan
        with warnings.catch_warnings():  # constant values (every run predicts one class): nan, said once
            warnings.simplefilter("ignore")
            return float(spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic)


def _epoch(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() else value


class Nearest:
    """A trial's values -> the recorded configuration: the same one, else the nearest in the
    normalised box (ties: the lower number); `exclude`: configurations this replay's trials
    already train as (MAPPINGS: "unused"), unless every one is."""

    def __init__(self, space: Space, configs: dict[int, dict]):
        for c in configs.values():  # milestones the design has but the space file does not
            if "milestones" in c and c["milestones"] not in space.milestones:
                space.milestones.append(c["milestones"])
        self.space, self.numbers = space, sorted(configs)
        self.keys = {_key(configs[n]): n for n in reversed(self.numbers)}
        self.points = np.stack([space.encode(configs[n]) for n in self.numbers])

    def __call__(self, params: dict[str, Any], exclude: Collection[int] = ()) -> tuple[int, float]:
        if (n := self.keys.get(_key(params))) is not None and n not in exclude:
            return n, 0.0
        d = np.linalg.norm(self.points - self.space.encode(params), axis=1)
        if len(exclude) < len(self.numbers):
            d[[i for i, n in enumerate(self.numbers) if n in exclude]] = np.inf
        i = int(np.argmin(d))
        return self.numbers[i], float(d[i])


def _key(c: dict) -> tuple:
    return (round(float(c["lr"]), 6), int(c["batch_size"]), int(c["frozen_stages"]), c["schedule"],
            tuple(c["milestones"]) if c.get("schedule") == "step" else None, c["augment"])


# --- simulated workers ---------------------------------------------------------------------


class SimulatedEvents:
    """The orchestrator's event queue in simulated time: the pending event with the smallest
    timestamp is handed out next (ties: the lower slot), and the clock moves to it."""

    def __init__(self):
        self.now = 0.0
        self.workers: list[TableWorker] = []
        self.running: dict = {}  # the orchestrator's Running by slot index: a worker's slot is where it runs
        self.handed: collections.Counter[str] = collections.Counter()  # events handed out, by kind

    def slot_of(self, worker: "TableWorker") -> int:
        return next(i for i, run in self.running.items() if run.proc is worker)

    def put(self, item) -> None:
        """worker_handle's relay thread finds a simulated worker's stdout empty and says it
        ended; the simulated worker says so itself, in order."""

    def get(self, timeout: float | None = None):
        ready = [w for w in self.workers if w.next is not None]
        if not ready:
            raise RuntimeError("replay: the orchestrator waits for an event no simulated worker has")
        worker = min(ready, key=lambda w: (w.next[0], self.slot_of(w)))
        slot = self.slot_of(worker)
        when, event = worker.next
        self.now = max(self.now, when)
        worker.advance()
        if event is None:
            self.workers.remove(worker)
        self.handed[event["event"] if event else "end"] += 1
        return slot, event


class TableWorker:
    """One trial's worker, playing the table's curve (see the module docstring)."""

    pids = itertools.count(10 ** 6)

    def __init__(self, launcher: "TableLauncher", config_path: Path):
        from sweeper.spec.trial_config import TrialConfig

        self.launcher, self.pid = launcher, next(self.pids)
        self.config = TrialConfig.from_json(config_path.read_text())
        self.dir = Path(self.config.trial_dir)
        self.stdout: tuple = ()  # the relay thread reads nothing: events come from SimulatedEvents
        self.stdin = self
        self.returncode: int | None = None
        self.reply: str | None = None
        self.start = launcher.events.now
        self.script = self._script()
        self.next: tuple[float, dict | None] | None = None
        self.advance()

    # the orchestrator's side of the pipes and the process
    def write(self, text: str) -> None:
        self.reply = text.strip()
        if self.next is None and self.returncode is None:
            self.advance()

    def flush(self) -> None:
        pass

    def send_signal(self, sig: int) -> None:  # only on Ctrl-C or a bug: end at once
        self.script = iter(())
        self.next = (self.launcher.events.now, None)

    def wait(self, timeout: float | None = None) -> int:
        return self.returncode if self.returncode is not None else 0

    def advance(self) -> None:
        """The next event, or None while waiting for a reply (or at the end of output)."""
        if self.next is not None and self.next[1] is None:
            self.returncode, self.next = 0, None
            return
        self.next = next(self.script, None)
        if self.next is not None and self.next[1] is not None and self.next[1].get("event") == "await":
            self.next = None  # waits for `write`

    def _script(self) -> Iterator[tuple[float, dict | None]]:
        c = self.config
        curve = self.launcher.curve_for(c)
        resumed: float = 0
        if c.resume_from:
            resumed = _epoch(Path(c.resume_from).read_text())  # 0.5: paused at a part-epoch rung
        t0 = self.start + self.launcher.startup_s - curve.seconds_at(resumed)
        yield self.start + self.launcher.startup_s, {
            "event": "start", "classes": [], "device": "cpu", "precision": "replay", "cuda_visible_devices": "",
            "gpu_sharing": 1, "train_images": 0}
        yield self.start + self.launcher.startup_s, {"event": "first_step"}
        if resumed:
            yield self.start + self.launcher.startup_s, {
                "event": "resumed", "records": [_record(curve.at(e)) for e in range(1, math.floor(resumed) + 1)]}
        previous = curve.seconds_at(resumed)
        chosen = (-math.inf, 0)
        # a part-epoch rung the recording has no value at (an epoch of one step: its half-way
        # validation never ran) is judged after that step, at the epoch's end, as the worker does
        missing = [{**curve.at(math.ceil(d)), "epoch": d} for d in c.decide_at
                   if curve.at(d) is None and curve.at(math.ceil(d)) is not None]
        for r in sorted(curve.records + missing, key=lambda r: r["epoch"]):
            if r["epoch"] <= resumed:
                if isinstance(r["epoch"], int):
                    chosen = _offer(c.value, chosen, r[c.objective], r["epoch"])
                continue
            when = t0 + r["seconds"]
            if not isinstance(r["epoch"], int):
                if r["epoch"] in c.decide_at:  # a part-epoch rung: the worker saves and waits
                    (self.dir / "resume.pt").write_text(str(r["epoch"]))
                    yield when, {"event": "eval", **_record(r), "seconds": r["seconds"] - previous, "decide": True}
                    yield when, {"event": "await"}
                    if self.reply != "continue":
                        yield when, {"event": "stopped"}
                        yield when, None
                        return
                elif c.eval_every < 1:
                    yield when, {"event": "eval", **_record(r), "seconds": r["seconds"] - previous}
                continue
            chosen = _offer(c.value, chosen, r[c.objective], r["epoch"])
            (self.dir / "resume.pt").write_text(str(r["epoch"]))  # what promotion looks for
            yield when, {"event": "epoch", **_record(r), "seconds": r["seconds"] - previous}
            previous = r["seconds"]
            yield when, {"event": "await"}
            if self.reply != "continue":
                yield when, {"event": "stopped"}
                yield when, None
                return
        last = curve.records[-1]["epoch"] if curve.records else 0
        end = t0 + (curve.records[-1]["seconds"] if curve.records else 0.0)
        if last < c.epochs:  # the recording ended early
            if curve.status.startswith("non-finite"):
                yield end, {"event": "nonfinite", "epoch": math.floor(last) + 1, "train_loss": math.nan}
                yield end, {"event": "stopped"}
            else:
                yield end, {"event": "fail", "reason": f"recorded: {curve.status}"}
            yield end, None
            return
        yield end, {"event": "value", "value": chosen[0], "epoch": chosen[1]}
        yield end, {"event": "complete"}
        yield end, None


def _record(r: dict) -> dict:
    return {"epoch": r["epoch"], "val_acc": r["val_acc"], "val_balanced_acc": r["val_balanced_acc"]}


def _offer(mode: str, chosen: tuple[float, int], value: float, epoch: int) -> tuple[float, int]:
    """train/evaluation.Chosen: the last epoch's value, or the best (earliest on ties)."""
    return (value, epoch) if mode == "last" or value > chosen[0] else chosen


class TableLauncher:
    """fork_server.Launcher's stand-in: launches TableWorkers into SimulatedEvents."""

    def __init__(self, table: Table, mapper: Nearest, events: SimulatedEvents, seed: int, startup_s: float,
                 mapping: str = "unused"):
        self.table, self.mapper, self.events, self.seed, self.startup_s = table, mapper, events, seed, startup_s
        self.mapping = mapping
        self.trials: dict[int, tuple[int, int, float]] = {}  # trial number: (configuration, seed, distance)

    def curve_for(self, config) -> Curve:
        """The trial's curve: its recorded configuration, and a training seed drawn from (optimizer
        seed, trial number) -- the same when a paused trial resumes."""
        if config.number not in self.trials:
            used = {n for n, _, _ in self.trials.values()} if self.mapping == "unused" else ()
            n, distance = self.mapper(config.params, exclude=used)
            seed = self.table.seeds[random.Random(f"{self.seed}-{config.number}").randrange(len(self.table.seeds))]
            self.trials[config.number] = (n, seed, distance)
        n, seed, _ = self.trials[config.number]
        return self.table.curves[(n, seed)]

    def launch(self, config_path: Path, env: dict[str, str], stderr) -> TableWorker:
        worker = TableWorker(self, config_path)
        self.events.workers.append(worker)
        return worker

    def close(self) -> None:
        pass


# --- one replay ----------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    task: str
    strategy: str
    budget: str  # "1/8" ... or "full"
    budget_epochs: int | None
    seed: int
    test_acc: float | None  # of the configuration sweeper returns, mean over the table's seeds; None: none returned
    test_checkpoint: float | None  # of the run it returns (the trial's own training seed)
    val: float | None
    config: int | None
    epochs: int
    screened: int  # trials that trained to a rung (0.5 included)
    distinct: int  # recorded configurations they trained as
    trials: int
    mapped_distance: float  # mean, over trials, of the distance to the recorded configuration
    sim_hours: float
    seconds: float  # this replay's own wall time


class Decisions(SweepProgress):
    """What the orchestrator decided, in order (`log`): a silent SweepProgress that writes it down."""

    def __init__(self):
        super().__init__("replay", 0, "val_acc")
        self.log: list[tuple] = []

    def started(self, number, slot, params, epochs):
        super().started(number, slot, params, epochs)
        self.log.append(("start", number))

    def finished(self, number, state, value, reason):
        super().finished(number, state, value, reason)
        self.log.append((state, number, reason))

    def message(self, text):
        for words, kind in (("promoted at rung", "promoted"), ("the rest of the budget is kept", "kept")):
            if words in text:
                self.log.append((kind, int(text.split()[1].rstrip(":"))))


def strategy_doc(table: Table, strategy: str, seed: int, study: str) -> dict:
    """The space file of a strategy, as benchmarks/search.py writes it."""
    doc = table.doc(study)
    known = [table.configs[n] for n in table.known]
    if strategy == GRID:
        doc["search"].update(n_trials=len(known), sampler={"name": "random", "seed": seed}, pruner="none")
        doc["enqueue"] = known
        return doc
    _, sampler, pruner = STRATEGY_SIDES[strategy]
    doc["search"].update(sampler={**sampler, "seed": seed}, pruner=pruner)
    if strategy in KNOWN_IN_POOL:
        doc["enqueue"] = known
    return doc


@dataclasses.dataclass
class Sweep:
    trials: list  # the study's trials at the end (FrozenTrial)
    launcher: TableLauncher
    events: SimulatedEvents


def sweep(table: Table, doc: dict, seed: int, budget_epochs: int | None, workers: int = 2, startup_s: float = 2.0,
          mapper: Nearest | None = None, decisions: Decisions | None = None, sqlite: bool = False,
          mapping: str = "unused") -> Sweep:
    """`sweeper run --space <doc> --budget-epochs B --workers K` on the table's curves, in a
    temporary folder on tmpfs; `seed` draws the trials' training seeds (TableLauncher.curve_for)."""
    from sweeper import store
    from sweeper.spec.sweep_spec import parse_spec
    from sweeper.sweep import orchestrator, setup
    from sweeper.sweep.worker_handle import Slot

    spec = parse_spec(doc, "replay", {"budget_epochs": budget_epochs})
    tmp = Path(tempfile.mkdtemp(prefix="replay-", dir=_tmpfs()))
    try:
        url = f"sqlite:///{tmp / 'studies.db'}"  # its lock files, beside, are the budget lock's
        storage = store.open_storage(url) if sqlite else _in_memory_storage()()
        study = setup.create_study(spec, storage, url, workers)
        events, decisions = SimulatedEvents(), decisions or Decisions()
        launcher = TableLauncher(table, mapper or Nearest(Space(doc), table.configs), events, seed, startup_s, mapping)
        options = orchestrator.Options(heartbeat=1e12)  # `run`'s defaults; one orchestrator: no heartbeats
        runner = orchestrator.Orchestrator(spec, study, [Slot(i, None) for i in range(workers)], tmp / "cache",
                                           decisions, tmp / "trials", url, options, launcher=launcher)
        runner.events = events  # the simulated queue, in place of the relay threads' one
        events.running = runner.running
        runner.run()
        trials = study.get_trials()
        if sqlite:
            storage.engine.dispose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Sweep(trials, launcher, events)


def replay(table: Table, strategy: str, seed: int, budget: tuple[int, int] | None, workers: int = 2,
           startup_s: float = 2.0, mapper: Nearest | None = None, decisions: Decisions | None = None,
           sqlite: bool = False, mapping: str = "unused") -> Outcome:
    """One sweep of `strategy` with optimizer seed `seed` on the table; `budget`: a fraction of
    the grid's epochs (None: the strategy's own end, the grid's n_trials)."""
    from sweeper.analyze.ranking import configurations
    from sweeper.search.asha import reached
    from sweeper.sweep import epochs

    started = time.perf_counter()
    grid_epochs = len(table.known) * table.epochs
    budget_epochs = max(table.epochs, grid_epochs * budget[0] // budget[1]) if budget else None
    done = sweep(table, strategy_doc(table, strategy, seed, "replay"), seed, budget_epochs, workers, startup_s,
                 mapper, decisions, sqlite, mapping)
    ranked = configurations(done.trials)  # what `sweeper best` returns first
    test = checkpoint = val = chosen = None
    if ranked:
        best = ranked[0].first
        chosen, tseed, _ = done.launcher.trials[best.number]
        at = best.user_attrs["value_epoch"]
        checkpoint = table.curves[(chosen, tseed)].at(at)["test_acc"]
        # the configuration's test accuracy: the mean over its recorded seeds (one seed's differs
        # from the other's by about as much as the effects measured)
        test = statistics.fmean(r["test_acc"] for s in table.seeds if (r := table.curves[(chosen, s)].at(at)))
        val = best.value
    distances = [d for _, _, d in done.launcher.trials.values()]
    return Outcome(table.task, strategy, f"{budget[0]}/{budget[1]}" if budget else "full", budget_epochs, seed,
                   test, checkpoint, val, chosen, epochs.trained(done.trials),
                   sum(1 for t in done.trials if reached(t)),  # trained to a rung (0.5 included)
                   len({done.launcher.trials[t.number][0] for t in done.trials if reached(t)}), len(done.trials),
                   statistics.fmean(distances) if distances else 0.0, done.events.now / 3600,
                   time.perf_counter() - started)


def _in_memory_storage():
    import optuna

    class ReplayStorage(optuna.storages.InMemoryStorage):
        """Optuna's in-memory store (10x faster than SQLite here); store.study_lock reads an
        engine (PostgreSQL's advisory locks) but locks an SQLite URL with a file, as here."""

        engine = None

    return ReplayStorage


def _tmpfs() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


# --- the quick table -----------------------------------------------------------------------


def record_quick(table: Path = QUICK, epochs: int = 4, known: int = 4) -> None:
    """benchmarks/curves/quick.csv, recorded once through the real worker as curves.py records
    (test_resnet at 16 px on generated images): `known` known configurations, 2 mutations and
    2 uniform ones of curves.design, 2 seeds, `epochs` epochs, every half epoch."""
    import curves
    from search import manual_configs

    from sweeper.spec.sweep_spec import parse_spec
    from sweeper.sweep import setup
    from sweeper.testing import make_image_folder

    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_image_folder(Path(tmp) / "quick", classes=4, per_class=24)
        (data / "val").rename(data / "test")
        make_image_folder(Path(tmp) / "val", classes=4, per_class=12, seed=1, split=False)
        (Path(tmp) / "val").rename(data / "val")
        args = argparse.Namespace(size=16, model="test_resnet", pretrained=False, epochs=epochs)
        doc = space_doc(args, data, "curves", manual_configs(epochs)[:known])
        doc["train"]["precision"] = "fp32"
        spec = parse_spec(doc, "curves")
        full = curves.design(space_doc(args, data, "curves", manual_configs(epochs)), epochs, 2, 2, 0)
        runs = [(n, o, c) for n, (o, c) in enumerate(full) if o != "known" or n < known]
        cache = setup.prepare_data(spec, Path(tmp))
        table.unlink(missing_ok=True)
        for n, origin, c in runs:
            for seed in range(2):
                records, status = curves.record_run(spec, n, c, seed, cache, Path(tmp) / "work")
                curves.append(table, curves.rows_of(n, origin, c, seed, curves.with_cumulative_seconds(records), status))
                print(f"config {n} ({origin}) seed {seed}: {status}", flush=True)
    meta = {"task": "quick (generated images: 4 classes, 64 train / 48 val / 32 test images, test_resnet 16 px, fp32)",
            "command": "benchmarks/replay.py --record-quick", "machine": curves.machine(),
            "recorded": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
            "hours": round((time.time() - started) / 3600, 3)}
    table.with_suffix(".meta.json").write_text(json.dumps(meta, indent=1) + "\n")




# --- many replays, and what they say ---------------------------------------------------------


_tables: dict[Path, tuple[Table, Nearest]] = {}


def _run(job: tuple) -> Outcome:
    path, strategy, seed, budget, workers, startup_s, mapping = job
    if path not in _tables:
        import optuna

        from sweeper.spec.trial_config import normalization

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        normalization("resnet18")  # timm's import, once a process: not a replay's own seconds
        table = Table(path)
        _tables[path] = (table, Nearest(Space(table.doc("map")), table.configs))
    table, mapper = _tables[path]
    return replay(table, strategy, seed, budget, workers, startup_s, mapper=mapper, mapping=mapping)


def run_all(paths: list[Path], strategies: list[str], seeds: int, workers: int, startup_s: float,
            jobs: int, mapping: str = "unused") -> list[Outcome]:
    todo = [(p, s, seed, None if s == GRID else b, workers, startup_s, mapping)
            for p in paths for s in strategies for b in ([None] if s == GRID else BUDGETS) for seed in range(seeds)]
    if jobs <= 1:
        return [_run(job) for job in todo]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        return pool.map(_run, todo, chunksize=4)


def bootstrap(diffs: list[float], statistic=np.median, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of `statistic` (the median, or the mean)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(diffs)
    values = statistic(x[rng.integers(0, len(x), (resamples, len(x)))], axis=1)
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def paired(ours: dict[int, Outcome], theirs: dict[int, Outcome]) -> dict[str, float] | None:
    """Paired test-accuracy differences over the seeds both have: the median with its 95%
    bootstrap CI and win rate (ties count half), as the issue fixed them; beside them the mean
    with its CI, wins-ties-losses and Wilcoxon's signed-rank p (Pratt's zeros): with many exact
    ties the median's CI collapses to [0, 0] and hides both gains and losses. A strategy that
    returns nothing scores 0."""
    from scipy.stats import wilcoxon

    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return None
    d = [(ours[s].test_acc or 0.0) - (theirs[s].test_acc or 0.0) for s in seeds]
    low, high = bootstrap(d)
    mean_low, mean_high = bootstrap(d, np.mean)
    won, lost = sum(x > 1e-12 for x in d), sum(x < -1e-12 for x in d)
    with warnings.catch_warnings():  # all differences 0: no test
        warnings.simplefilter("ignore")
        p = float(wilcoxon(d, zero_method="pratt").pvalue) if won + lost else 1.0
    return {"median": statistics.median(d), "low": low, "high": high, "win": (won + 0.5 * (len(d) - won - lost)) / len(d),
            "mean": statistics.fmean(d), "mean_low": mean_low, "mean_high": mean_high,
            "wtl": f"{won}-{len(d) - won - lost}-{lost}", "p": p if not math.isnan(p) else 1.0}


def _by_run(outcomes: list[Outcome]) -> dict[tuple[str, str, str], dict[int, Outcome]]:
    """{(task, strategy, budget): {optimizer seed: outcome}}."""
    by: dict[tuple[str, str, str], dict[int, Outcome]] = {}
    for o in outcomes:
        by.setdefault((o.task, o.strategy, o.budget), {})[o.seed] = o
    return by


def pooled(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """Across tasks, per (budget, strategy): the mean paired test difference over every (task,
    seed) against the grid and the one-epoch baseline, its 95% CI from a bootstrap stratified by
    task (each task's seeds resampled within it, so every task weighs the same), and W-T-L.
    The criterion is per task; this says which way the evidence leans where tasks disagree."""
    by = _by_run(outcomes)
    tasks = list(dict.fromkeys(o.task for o in outcomes))
    rows = []
    for budget in [f"{a}/{b}" for a, b in BUDGETS]:
        for strategy in STRATEGIES:
            if strategy == GRID or not all((t, strategy, budget) in by for t in tasks):
                continue
            row: dict[str, Any] = {"budget": budget, "strategy": strategy, "tasks": len(tasks)}
            for name, (other, other_budget) in (("grid", (GRID, "full")), ("1epoch", (BASELINE, budget))):
                diffs = []
                for t in tasks:
                    ours, theirs = by[(t, strategy, budget)], by.get((t, other, other_budget), {})
                    seeds = sorted(set(ours) & set(theirs))
                    diffs.append(np.array([(ours[s].test_acc or 0.0) - (theirs[s].test_acc or 0.0) for s in seeds]))
                if strategy == other or not all(len(d) for d in diffs):
                    row[name] = None
                    continue
                rng = np.random.default_rng(0)
                means = np.mean([d[rng.integers(0, len(d), (2000, len(d)))].mean(axis=1) for d in diffs], axis=0)
                every = np.concatenate(diffs)
                won, lost = int((every > 1e-12).sum()), int((every < -1e-12).sum())
                row[name] = {"mean": float(np.mean([d.mean() for d in diffs])),
                             "low": float(np.percentile(means, 2.5)), "high": float(np.percentile(means, 97.5)),
                             "wtl": f"{won}-{len(every) - won - lost}-{lost}"}
            rows.append(row)
    return rows


def pooled_text(rows: list[dict], markdown_table: bool = False) -> str:
    if not rows or rows[0]["tasks"] < 2:
        return ""
    head = ["budget", "strategy", "vs grid: mean [95% CI] W-T-L", "vs 1-epoch: mean [95% CI] W-T-L"]

    def cell(d: dict | None) -> str:
        return "-" if d is None else f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] {d['wtl']}"

    cells = [[r["budget"], r["strategy"], cell(r["grid"]), cell(r["1epoch"])] for r in rows]
    title = (f"Pooled over {rows[0]['tasks']} tasks (each task weighs the same; bootstrap stratified by task): "
             "paired test-accuracy difference")
    return _render(title, head, cells, markdown_table)


def _render(title: str, head: list[str], cells: list[list[str]], markdown_table: bool) -> str:
    """A titled table: markdown, or columns padded for a terminal."""
    if markdown_table:
        return "\n".join([title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                          *("| " + " | ".join(c) + " |" for c in cells), ""])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    return "\n".join([title, "  ".join(h.ljust(w) for h, w in zip(head, widths)),
                      *("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells), ""])


def summarise(outcomes: list[Outcome], tables: dict[str, Table]) -> list[dict[str, Any]]:
    """One row per (task, budget, strategy): the primary metric against the grid and the
    one-epoch baseline, and the secondary ones."""
    by = _by_run(outcomes)
    rows = []
    for task in dict.fromkeys(o.task for o in outcomes):
        table = tables[task]
        rho = {f"rho_{e:g}": table.spearman(e) for e in (0.5, 1, 2)}
        grid = by.get((task, GRID, "full"), {})
        budgets = ["full"] + [f"{a}/{b}" for a, b in BUDGETS]
        for budget in budgets:
            base = by.get((task, BASELINE, budget), {})
            for strategy in STRATEGIES:
                runs = by.get((task, strategy, budget))
                if not runs:
                    continue
                got = list(runs.values())
                row = {"task": task, "budget": budget, "budget_epochs": got[0].budget_epochs or "",
                       "strategy": strategy, "seeds": len(got), "floored": budget != "full" and len(table.known) * table.epochs
                       * int(budget.split("/")[0]) // int(budget.split("/")[1]) < table.epochs,
                       "test": statistics.median(o.test_acc or 0.0 for o in got),
                       "test_checkpoint": statistics.median(o.test_checkpoint or 0.0 for o in got)}
                for name, other in (("grid", grid), ("1epoch", base)):
                    p = paired(runs, other) if other is not runs else None
                    for k in ("median", "low", "high", "win", "mean", "mean_low", "mean_high", "wtl", "p"):
                        row[f"vs_{name}_{k}"] = "" if p is None else p[k]
                row.update({"val": statistics.median(o.val or 0.0 for o in got),
                            "epochs": statistics.median(o.epochs for o in got), "epochs_max": max(o.epochs for o in got),
                            "over_budget": sum(o.budget_epochs is not None and o.epochs > o.budget_epochs for o in got),
                            "screened": statistics.median(o.screened for o in got),
                            "distinct": statistics.median(o.distinct for o in got),
                            "no_answer": sum(o.test_acc is None for o in got),
                            "mapped_distance": statistics.fmean(o.mapped_distance for o in got),
                            "sim_hours": statistics.median(o.sim_hours for o in got),
                            "s_per_replay": statistics.fmean(o.seconds for o in got), **rho})
                rows.append(row)
    return rows


def _ci(row: dict, name: str) -> str:
    if row[f"vs_{name}_median"] == "":
        return "-"
    return (f"{row[f'vs_{name}_median']:+.3f} [{row[f'vs_{name}_low']:+.3f}, {row[f'vs_{name}_high']:+.3f}] "
            f"{row[f'vs_{name}_win']:.0%}")


def _mean_ci(row: dict, name: str) -> str:
    if row[f"vs_{name}_mean"] == "":
        return "-"
    return (f"{row[f'vs_{name}_mean']:+.3f} [{row[f'vs_{name}_mean_low']:+.3f}, {row[f'vs_{name}_mean_high']:+.3f}] "
            f"{row[f'vs_{name}_wtl']} p={row[f'vs_{name}_p']:.2f}")


HEAD = ("budget", "strategy", "test acc", "vs grid: median [95% CI] win", "vs 1-epoch: median [95% CI] win",
        "vs grid: mean [95% CI] W-T-L p", "vs 1-epoch: mean [95% CI] W-T-L p",
        "best val", "epochs (max)", "screened (distinct)", "s/replay")


def _cells(row: dict) -> list[str]:
    budget = row["budget"] + (f" ({row['budget_epochs']}{', floored' if row['floored'] else ''})"
                              if row["budget_epochs"] else "")
    return [budget, row["strategy"], f"{row['test']:.3f}", _ci(row, "grid"), _ci(row, "1epoch"),
            _mean_ci(row, "grid"), _mean_ci(row, "1epoch"), f"{row['val']:.3f}",
            f"{row['epochs']:g} ({row['epochs_max']})", f"{row['screened']:g} ({row['distinct']:g})",
            f"{row['s_per_replay']:.2f}"]


def _about(rows: list[dict], task: str, tables: dict[str, Table], workers: int) -> str:
    first = next(r for r in rows if r["task"] == task)
    t = tables[task]
    best, known = t.best_test(t.configs), t.best_test(t.known)
    return (f"{task}: {len(t.configs)} configurations ({len(t.known)} known) x {len(t.seeds)} seeds, {t.epochs} "
            f"epochs; grid {len(t.known) * t.epochs} epochs; {first['seeds']} optimizer seeds, {workers} workers. "
            f"Best mean test acc over seeds: {best[1]:.3f} (configuration {best[0]}), of the known ones {known[1]:.3f} "
            f"(configuration {known[0]}). Spearman rho of val at 1/2, 1, 2 epochs vs the end: "
            f"{first['rho_0.5']:.2f}, {first['rho_1']:.2f}, {first['rho_2']:.2f}")


def text_table(rows: list[dict], tables: dict[str, Table], workers: int) -> str:
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [_cells(r) for r in rows if r["task"] == task]
        widths = [max(len(h), *(len(c[i]) for c in mine)) for i, h in enumerate(HEAD)]
        out.append(_about(rows, task, tables, workers))
        out.append("  ".join(h.ljust(w) for h, w in zip(HEAD, widths)))
        out.extend("  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in mine)
        over = sum(r["over_budget"] for r in rows if r["task"] == task)
        none = sum(r["no_answer"] for r in rows if r["task"] == task)
        out.append(f"replays over their epoch budget: {over}; without an answer (scored 0): {none}\n")
    return "\n".join(out)


def markdown(rows: list[dict], tables: dict[str, Table], workers: int) -> str:
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        out += [_about(rows, task, tables, workers), "", "| " + " | ".join(HEAD) + " |",
                "|" + "---|" * len(HEAD)]
        out += ["| " + " | ".join(_cells(r)) + " |" for r in rows if r["task"] == task]
        out.append("")
    return "\n".join(out)


def verdicts(rows: list[dict]) -> list[dict[str, Any]]:
    """The success criterion of issue 27, per (budget, strategy): above both the grid and the
    one-epoch baseline (median paired test difference > 0, its 95% CI excluding 0) on at least
    2 of 3 tasks (two thirds of them), and on no task below either by more than 1 point."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    need = math.ceil(2 * len(tasks) / 3)
    out = []
    for budget in dict.fromkeys(r["budget"] for r in rows if r["budget"] != "full"):
        for strategy in dict.fromkeys(r["strategy"] for r in rows if r["budget"] == budget):
            mine = [r for r in rows if r["budget"] == budget and r["strategy"] == strategy]
            if strategy == BASELINE or len(mine) < len(tasks) or any(r["vs_grid_median"] == "" for r in mine):
                continue
            above = [r["task"] for r in mine if r["vs_grid_low"] > 0 and r["vs_grid_median"] > 0
                     and r["vs_1epoch_low"] > 0 and r["vs_1epoch_median"] > 0]
            worst = min(min(r["vs_grid_median"], r["vs_1epoch_median"]) for r in mine)
            # the same on the mean, whose CI does not collapse on ties; a loss hidden by a median of 0 counts
            above_mean = [r["task"] for r in mine if r.get("vs_grid_mean_low", 0) > 0 and r.get("vs_1epoch_mean_low", 0) > 0]
            worst_mean = min(min(r.get("vs_grid_mean", 0), r.get("vs_1epoch_mean", 0)) for r in mine)
            out.append({"budget": budget, "strategy": strategy, "above_both": above, "tasks": len(tasks),
                        "worst": worst, "meets": len(above) >= need and worst >= -0.01,
                        "above_both_mean": above_mean, "worst_mean": worst_mean,
                        "meets_mean": len(above_mean) >= need and min(worst, worst_mean) >= -0.01})
    return out


def verdict_text(rows: list[dict], markdown_table: bool = False) -> str:
    v = verdicts(rows)
    if not v:
        return ""
    head = ["budget", "strategy", "tasks above grid and 1-epoch (median's CI > 0)", "worst median difference",
            "meets", "tasks above both (mean's CI > 0)", "worst mean difference", "meets (mean)"]

    def tasks(names: list[str], of: int) -> str:
        return f"{len(names)} of {of}" + (f" ({', '.join(names)})" if names else "")

    cells = [[r["budget"], r["strategy"], tasks(r["above_both"], r["tasks"]), f"{r['worst']:+.3f}",
              "yes" if r["meets"] else "no", tasks(r["above_both_mean"], r["tasks"]), f"{r['worst_mean']:+.3f}",
              "yes" if r["meets_mean"] else "no"] for r in v]
    title = ("Success criterion (issue 27): above both baselines, CI excluding 0, on 2 of 3 tasks; never below "
             "either by more than 0.01. As fixed (the median) and on the mean (its CI; below by the median or the mean)")
    return _render(title, head, cells, markdown_table)


def write(outcomes: list[Outcome], rows: list[dict], tables: dict[str, Table], workers: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, [field.name for field in dataclasses.fields(Outcome)])
        w.writeheader()
        w.writerows(dataclasses.asdict(o) for o in outcomes)
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "summary.md").write_text(markdown(rows, tables, workers) + "\n" + verdict_text(rows, markdown_table=True)
                                    + "\n" + pooled_text(pooled(outcomes), markdown_table=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=None, help="comma-separated tables: names under benchmarks/curves/ or "
                        "paths to .csv files (default: every table there but quick)")
    parser.add_argument("--seeds", type=int, default=20, help="optimizer seeds per (task, strategy, budget)")
    parser.add_argument("--workers", type=int, default=2, help="simulated workers (slots)")
    parser.add_argument("--startup-s", type=float, default=2.0, help="simulated seconds before a worker's first step")
    parser.add_argument("--jobs", type=int, default=1, help="replays run in parallel (processes)")
    parser.add_argument("--out", type=Path, default=None,
                        help="runs.csv, summary.csv, summary.md (default: benchmarks/replay/; with --quick: none)")
    parser.add_argument("--strategies", default=None, help=f"comma-separated, of: {', '.join(STRATEGIES)} "
                        "(default: all)")
    parser.add_argument("--mapping", choices=MAPPINGS, default="unused",
                        help="a suggestion trains as the nearest recorded configuration no earlier trial of the "
                             "replay trains as (unused), or the nearest of all (nearest)")
    parser.add_argument("--quick", action="store_true", help="benchmarks/curves/quick.csv, 3 seeds")
    parser.add_argument("--record-quick", action="store_true", help="record benchmarks/curves/quick.csv again (minutes)")
    args = parser.parse_args(argv)
    if args.record_quick:
        record_quick()
        return 0
    if args.quick:
        paths, args.seeds = [QUICK], min(args.seeds, 3)
    else:
        names = args.tasks.split(",") if args.tasks else sorted(p.stem for p in CURVES.glob("*.csv") if p.stem != "quick")
        paths = [Path(name) if name.endswith(".csv") else CURVES / f"{name}.csv" for name in names]
    missing = [p for p in paths if not p.is_file()]
    if missing or not paths:
        print(f"Error: no curve table {missing[0] if missing else CURVES / '*.csv'}; record one with "
              "benchmarks/curves.py --task NAME", file=sys.stderr)
        return 2
    tables = {p.stem: Table(p) for p in paths}
    for t in tables.values():
        if len(t.known) < 2 or len(t.configs) < 3:
            print(f"Error: {t.path} has {len(t.configs)} complete configurations ({len(t.known)} known); "
                  "a replay needs 2 known and 3 in all", file=sys.stderr)
            return 2
    strategies = re.split(r",(?![^()]*\))", args.strategies) if args.strategies else STRATEGIES  # not inside (...)
    if unknown := [s for s in strategies if s not in STRATEGIES]:
        print(f"Error: --strategies: unknown {unknown[0]!r}; valid: {', '.join(STRATEGIES)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    outcomes = run_all(paths, strategies, args.seeds, args.workers, args.startup_s, args.jobs, args.mapping)
    rows = summarise(outcomes, tables)
    print(text_table(rows, tables, args.workers))
    print(verdict_text(rows))
    print(pooled_text(pooled(outcomes)))
    out = args.out or (None if args.quick else ROOT / "benchmarks" / "replay")  # --quick: nothing, unless asked
    if out is not None:
        write(outcomes, rows, tables, args.workers, out)
    print(f"{len(outcomes)} replays in {time.perf_counter() - started:.0f} s "
          f"({statistics.fmean(o.seconds for o in outcomes):.2f} s each, {args.jobs} job(s)); "
          + (f"written to {out}/runs.csv, summary.csv, summary.md" if out else "--out DIR writes them as CSV and markdown"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
