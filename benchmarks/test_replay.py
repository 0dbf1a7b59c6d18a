"""benchmarks/replay.py: simulated workers drive sweeper's own orchestrator as real ones would."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import replay
from curves import FIELDS
from search import ASHA, SIDES, manual_configs, space_doc

from sweeper.testing import make_image_folder, write_space

ROOT = Path(__file__).resolve().parents[1]


def test_the_in_memory_store_decides_as_sqlite_does():
    """The replay's fast store (optuna's in-memory one) changes nothing the orchestrator decides."""
    table = replay.Table(replay.QUICK)
    for strategy, budget in (("tpe + asha (mf)", (1, 2)), ("1-epoch", (1, 4)), (replay.GRID, None)):
        fast, slow = replay.Decisions(), replay.Decisions()
        a = replay.replay(table, strategy, 1, budget, decisions=fast)
        b = replay.replay(table, strategy, 1, budget, decisions=slow, sqlite=True)
        assert fast.log == slow.log and fast.log
        assert (a.config, a.test_acc, a.epochs, a.screened) == (b.config, b.test_acc, b.epochs, b.screened)


def test_the_grid_trains_every_known_configuration_and_returns_the_best_by_val():
    table = replay.Table(replay.QUICK)
    decisions = replay.Decisions()
    got = replay.replay(table, replay.GRID, 0, None, decisions=decisions)
    assert got.epochs == len(table.known) * table.epochs and got.mapped_distance == 0.0
    assert [d for d in decisions.log if d[0] == "COMPLETE"] and not [d for d in decisions.log if d[0] == "PRUNED"]
    launched = replay.sweep(table, replay.strategy_doc(table, replay.GRID, 0, "g"), 0, None).launcher.trials
    assert sorted(c for c, _, _ in launched.values()) == sorted(table.known)
    finals = {number: table.curves[(c, s)].records[-1] for number, (c, s, _) in launched.items()}
    best = max(finals, key=lambda n: (finals[n]["val_acc"], -n))  # ties: the earlier trial
    assert got.config == launched[best][0] and got.test_acc == finals[best]["test_acc"]


def test_two_simulated_workers_interleave_by_the_table_s_seconds():
    """With K workers, events come in simulated time: no worker runs ahead of the clock."""
    table = replay.Table(replay.QUICK)
    done = replay.sweep(table, replay.strategy_doc(table, "random + asha", 0, "r"), 0, 12, workers=2)
    assert done.events.now > 0 and not done.events.workers
    assert sum(len(t.intermediate_values) for t in done.trials) >= 12


def _real_run(tmp: Path, sampler: dict, budget: int, epochs: int = 3) -> tuple[dict, list]:
    data = make_image_folder(tmp / "data", classes=3, per_class=18)
    args = argparse.Namespace(size=16, model="test_resnet", pretrained=False, epochs=epochs)
    doc = space_doc(args, data, "real", manual_configs(epochs)[:4])
    doc["train"]["precision"] = "fp32"
    doc["search"].update(sampler=sampler, pruner=ASHA)
    space = write_space(tmp / "real.yaml", doc)
    done = subprocess.run([sys.executable, "-m", "sweeper", "run", "--space", str(space), "--workers", "1",
                           "--budget-epochs", str(budget)], cwd=tmp, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    trials = optuna.load_study(study_name="real", storage=f"sqlite:///{tmp / 'studies.db'}").get_trials()
    return doc, trials


def _as_table(trials, path: Path) -> replay.Table:
    """Each real trial's curve (val_acc by epoch, from the store) as a configuration of its own."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        w.writeheader()
        for t in trials:
            params = json.loads((Path(t.user_attrs["trial_dir"]) / "config.json").read_text())["params"]
            knobs = {**params, "milestones": json.dumps(params.get("milestones", ""))}
            for epoch, value in sorted(t.intermediate_values.items()):
                w.writerow({"config": t.number, "origin": "real", "seed": 0, **knobs, "epoch": epoch,
                            "val_acc": value, "val_balanced_acc": value, "test_acc": value,
                            "seconds": 10.0 * epoch, "status": "ok"})
    return replay.Table(path)


def _decisions(trials) -> list[tuple]:
    return [(t.number, t.params, t.state.name, t.user_attrs.get("pauses"), t.user_attrs.get("reason"),
             t.user_attrs.get("epochs_run"), bool(t.user_attrs.get("finished_by_reserve")),
             dict(t.intermediate_values), t.value) for t in trials]


@pytest.mark.slow
@pytest.mark.parametrize("strategy,budget", [("random + asha", 8), ("tpe + asha (mf)", 10)])
def test_one_worker_replay_decides_as_the_real_run_it_replays(tmp_path, strategy, budget):
    """A real `sweeper run --workers 1`, then a replay of its own curves: the same trials with the
    same values, in the same order, paused, promoted, pruned and finished alike. (A decision the
    real run never made would ask the table for an epoch it lacks: the trial would fail.)"""
    _, sampler, _ = SIDES[strategy]
    doc, real = _real_run(tmp_path, {**sampler, "seed": 3}, budget)
    assert any(t.user_attrs.get("pauses") for t in real), "the real run paused nothing: a weak check"
    table = _as_table(real, tmp_path / "real.csv")
    replayed = replay.sweep(table, doc, 0, budget, workers=1)
    assert _decisions(replayed.trials) == _decisions(real)
    assert all(d == 0.0 for _, _, d in replayed.launcher.trials.values())
