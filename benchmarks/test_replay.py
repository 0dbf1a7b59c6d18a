"""benchmarks/replay.py: simulated workers drive sweeper's own orchestrator as real ones would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fidelity
import replay

from sweeper.testing import make_image_folder

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
    config, seed, _ = launched[best]
    assert got.config == config and got.test_checkpoint == finals[best]["test_acc"]  # the run it returns
    # the configuration's: the mean over the table's seeds, at the same epoch
    assert got.test_acc == pytest.approx(sum(table.curves[(config, s)].records[-1]["test_acc"] for s in table.seeds)
                                         / len(table.seeds))


def test_two_simulated_workers_interleave_by_the_table_s_seconds():
    """With K workers, events come in simulated time: no worker runs ahead of the clock."""
    table = replay.Table(replay.QUICK)
    done = replay.sweep(table, replay.strategy_doc(table, "random + asha", 0, "r"), 0, 12, workers=2)
    assert done.events.now > 0 and not done.events.workers
    assert sum(len(t.intermediate_values) for t in done.trials) >= 12


@pytest.mark.slow
@pytest.mark.parametrize("strategy,budget", [("random + asha", 8), ("tpe + asha (mf)", 10), ("screen (prior, 1/2)", 6)])
def test_one_worker_replay_decides_as_the_real_run_it_replays(tmp_path, strategy, budget):
    """A real `sweeper run --workers 1`, then a replay of its own curves: the same trials with the
    same values, in the same order, paused, promoted, pruned and finished alike. (A decision the
    real run never made would ask the table for an epoch it lacks: the trial would fail.)"""
    data = make_image_folder(tmp_path / "data", classes=3, per_class=18)
    doc, real, real_order = fidelity.real_run(tmp_path, data, strategy, 3, budget, workers=1)
    assert any(t.user_attrs.get("pauses") for t in real), "the real run paused nothing: a weak check"
    assert any(d[0] == "promoted" for d in real_order), real_order  # the sequence has promotions to compare
    order = replay.Decisions()
    replayed = fidelity.replay_of(doc, real, tmp_path, budget, workers=1, log=order)
    assert order.log == real_order
    assert fidelity.decisions(replayed.trials) == fidelity.decisions(real)
    assert all(d == 0.0 for _, _, d in replayed.launcher.trials.values())


@pytest.mark.slow
def test_fidelity_with_two_workers_prints_every_trial_and_what_agrees():
    """With two workers decisions may differ (timing); the script shows each trial's, side by side."""
    done = subprocess.run([sys.executable, "benchmarks/fidelity.py", "--workers", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("random + asha, sampler seed 3, budget 12 epochs, 2 worker(s)")
    assert lines[1].split()[:2] == ["trial", "real:"]
    assert lines[-2].startswith("sequence of decisions (starts, pauses, promotions, reserve, ends): ")
    assert lines[-1].startswith("trials: ") and "decisions that differ: " in lines[-1] and "answer: trial" in lines[-1]


def _outcome(seed: int, test: float | None) -> replay.Outcome:
    return replay.Outcome("t", "s", "1/4", 24, seed, test, test, test, 0, 24, 5, 5, 5, 0.0, 1.0, 0.1)


def test_paired_differences_count_ties_as_half_a_win_and_no_answer_as_zero():
    ours = {s: _outcome(s, v) for s, v in enumerate([0.7, 0.6, None, 0.5])}
    theirs = {s: _outcome(s, v) for s, v in enumerate([0.6, 0.6, 0.4, 0.6, 0.9])}  # seed 4: unpaired
    got = replay.paired(ours, theirs)
    assert got["win"] == (1 + 0.5) / 4  # +0.1, 0, -0.4 (no answer scores 0), -0.1
    assert got["median"] == pytest.approx(-0.05)
    assert got["low"] <= got["median"] <= got["high"]
    assert got["mean"] == pytest.approx(-0.1) and got["mean_low"] <= got["mean"] <= got["mean_high"]
    assert got["wtl"] == "1-1-2"
    from scipy.stats import wilcoxon  # Pratt's treatment of the zero difference, as scipy states it
    assert got["p"] == pytest.approx(wilcoxon([0.1, 0.0, -0.4, -0.1], zero_method="pratt").pvalue)
    assert replay.paired(ours, {}) is None


def test_a_suggestion_trains_as_a_configuration_no_earlier_trial_of_the_replay_trains_as():
    table = replay.Table(replay.QUICK)
    doc = replay.strategy_doc(table, "random + asha", 3, "r")
    for mapping, repeats in (("unused", False), ("nearest", True)):
        trained = [c for c, _, _ in replay.sweep(table, doc, 3, 16, mapping=mapping).launcher.trials.values()]
        first = trained[:len(table.configs)]  # once every configuration is used, the nearest again
        assert len(first) == len(table.configs) and (len(set(first)) < len(first)) == repeats, (mapping, trained)


def test_the_pooled_difference_weighs_each_task_the_same_whatever_its_seeds(monkeypatch):
    def o(task, strategy, budget, seed, test):
        return replay.Outcome(task, strategy, budget, 24, seed, test, test, test, 0, 24, 5, 5, 5, 0.0, 1.0, 0.1)

    # task a: +0.1 on 4 seeds; task b: -0.02 on 2 seeds; against the grid, the baseline level with it
    runs = [o("a", replay.GRID, "full", s, 0.5) for s in range(4)] + [o("b", replay.GRID, "full", s, 0.8) for s in range(2)]
    runs += [o("a", replay.BASELINE, "1/4", s, 0.5) for s in range(4)] + [o("b", replay.BASELINE, "1/4", s, 0.8) for s in range(2)]
    runs += [o("a", "s", "1/4", s, 0.6) for s in range(4)] + [o("b", "s", "1/4", s, 0.78) for s in range(2)]
    monkeypatch.setattr(replay, "STRATEGIES", [*replay.STRATEGIES, "s", "x"])
    got = {r["strategy"]: r for r in replay.pooled(runs + [o("a", "x", "1/4", 0, 0.1)])}
    assert "x" not in got  # replayed on one task of two: not pooled
    assert got["s"]["grid"]["mean"] == pytest.approx((0.1 - 0.02) / 2)  # not (4 * 0.1 - 2 * 0.02) / 6
    assert got["s"]["grid"]["low"] == pytest.approx(0.04) and got["s"]["grid"]["high"] == pytest.approx(0.04)  # no spread within a task
    assert got["s"]["grid"]["wtl"] == "4-0-2" and got["s"]["1epoch"]["wtl"] == "4-0-2"
    assert got[replay.BASELINE]["1epoch"] is None and got[replay.BASELINE]["grid"]["wtl"] == "0-6-0"
    assert "+0.040 [+0.040, +0.040] 4-0-2" in replay.pooled_text(replay.pooled(runs))


def test_the_success_criterion_needs_two_of_three_tasks_above_both_and_none_a_point_below():
    def row(task, strategy, grid, base):  # (median, CI low) against the grid and the one-epoch baseline
        return {"task": task, "budget": "1/4", "strategy": strategy, "vs_grid_median": grid[0], "vs_grid_low": grid[1],
                "vs_1epoch_median": base[0], "vs_1epoch_low": base[1]}

    up, flat, slightly_down, down = (0.02, 0.005), (0.01, 0.0), (-0.008, -0.02), (-0.012, -0.03)
    rows = [row("a", "s1", up, up), row("b", "s1", up, up), row("c", "s1", slightly_down, up),
            row("a", "s2", up, up), row("b", "s2", up, up), row("c", "s2", up, down),
            row("a", "s3", up, up), row("b", "s3", up, flat), row("c", "s3", up, up)]
    got = {v["strategy"]: v for v in replay.verdicts(rows)}
    assert got["s1"]["meets"] and got["s1"]["above_both"] == ["a", "b"]
    assert not got["s2"]["meets"] and got["s2"]["worst"] == -0.012  # 1.2 points below the baseline on c
    assert got["s3"]["meets"] and got["s3"]["above_both"] == ["a", "c"]  # on b the CI touches 0: not above
    assert "s1  " in replay.verdict_text(rows) and "2 of 3 (a, b)" in replay.verdict_text(rows)


def test_half_epoch_evaluations_reach_the_orchestrator_and_change_no_decision_today():
    """The table's half-epoch values are sent as `eval` events under train.eval_every 0.5; the
    orchestrator acts on whole epochs only (rungs are epochs), so nothing it decides changes."""
    table = replay.Table(replay.QUICK)
    doc = replay.strategy_doc(table, "random + asha", 2, "e")
    half = {**doc, "train": {**doc["train"], "eval_every": 0.5}}
    whole, halves = replay.Decisions(), replay.Decisions()
    a = replay.sweep(table, doc, 2, 8, decisions=whole)
    b = replay.sweep(table, half, 2, 8, decisions=halves)
    assert whole.log == halves.log
    assert [t.intermediate_values for t in a.trials] == [t.intermediate_values for t in b.trials]
    assert all(float(e).is_integer() for t in b.trials for e in t.intermediate_values)
    assert b.events.handed["eval"] > 0 and a.events.handed["eval"] == 0
    assert a.events.handed["epoch"] == b.events.handed["epoch"] > 0
