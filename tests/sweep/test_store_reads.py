"""The orchestrator reads the study's trials from the store once per decision: an epoch event
(budget, reserve, asha's rung) and a free slot's fill (promote a paused trial, else claim a new
one) each hand one list down. An Optuna pruner (median, ...) reads the trials itself, through
Optuna: with a budget as well, such an epoch event reads twice."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.sweep import reserve
from sweeper.sweep.orchestrator import Orchestrator
from sweeper.testing import tiny_space, write_space


@pytest.mark.parametrize("pruner, budget", [({"name": "asha", "min_resource": 1, "reduction_factor": 2}, 7),
                                            ({"name": "median", "n_startup_trials": 1}, None)])
def test_each_epoch_event_and_each_slot_fill_reads_the_trials_once(colour_folder, tmp_path, monkeypatch,
                                                                    pruner, budget):
    # Optuna wraps the RDBStorage a study is given in its cache; a rename there fails loudly here
    from optuna.storages._cached_storage import _CachedStorage

    reads, fills, event = Counter(), Counter(), []
    get_all_trials, handle, budget_trials = _CachedStorage.get_all_trials, Orchestrator._handle, reserve.Budget.trials

    def counted(self, *args, **kwargs):
        reads[event[-1] if event else None] += 1
        return get_all_trials(self, *args, **kwargs)

    def handled(self, run, message):
        event.append((run.trial.number, message["event"], message.get("epoch")))
        try:
            return handle(self, run, message)
        finally:
            event.pop()

    def trials(self):
        fills[sys._getframe(1).f_code.co_name] += 1  # who asked the budget for the trials
        return budget_trials(self)

    monkeypatch.setattr(_CachedStorage, "get_all_trials", counted)
    monkeypatch.setattr(Orchestrator, "_handle", handled)
    monkeypatch.setattr(reserve.Budget, "trials", trials)
    promotable = Orchestrator._promotable
    monkeypatch.setattr(Orchestrator, "_promotable", lambda *a: fills.update(["fill"]) or promotable(*a))
    search = {"n_trials": 3, "sampler": {"name": "random", "seed": 0}, "pruner": pruner}
    doc = tiny_space(colour_folder, study="reads", train={"epochs": 3, "batch_size": 8},
                     search={**search, **({"budget": {"epochs": budget}} if budget else {})},
                     space={"lr": [0.05, 1.0e-6, 2.0e-6]}, enqueue=[{"lr": 0.05}, {"lr": 1.0e-6}, {"lr": 2.0e-6}])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWEEPER_DEVICE", "cpu")
    result = CliRunner().invoke(app, ["run", "--space", str(write_space(tmp_path / "space.yaml", doc))])
    assert result.exit_code == 0, result.output
    per_epoch = {key: n for key, n in reads.items() if key is not None and key[1] == "epoch"}
    assert len(per_epoch) >= 3 and set(per_epoch.values()) == {1}, per_epoch  # asha's, or the median's own
    # every free slot's fill read the trials once, for promoting and claiming alike
    assert fills["fill"] >= 3 and fills["_loop"] == fills["fill"], fills
    assert fills["_promotable"] == fills["_claim"] == 0, fills
