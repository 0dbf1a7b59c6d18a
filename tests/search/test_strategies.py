"""Every sampler and pruner by name builds from the YAML and works in a real study store."""

from __future__ import annotations

import optuna
import pytest

from sweeper.search.strategies import PRUNERS, SAMPLERS
from sweeper.spec.sweep_spec import parse_spec
from sweeper.testing import tiny_space

SPACE = {
    "lr": {"low": 0.01, "high": 0.1, "step": 0.01},
    "frozen_stages": {"low": -1, "high": 2},
    "schedule": ["step", "cosine"],
    "milestones": {"choices": [[1], [2]], "when": {"schedule": "step"}},
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_samples_the_space(tmp_path, name):
    spec = parse_spec(tiny_space(train={"epochs": 3}, space=SPACE,
                                 search={"sampler": {"name": name, "seed": 0}}))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", sampler=spec.sampler(),
                                direction="maximize")
    for i in range(5):
        trial = study.ask()
        chosen = spec.space.suggest(trial)
        assert 0.01 <= chosen["lr"] <= 0.1 and -1 <= chosen["frozen_stages"] <= 2
        assert ("milestones" in chosen) == (chosen["schedule"] == "step")
        study.tell(trial, float(i))
    assert len(study.trials) == 5


PRUNER_OPTIONS = {"median": {"n_startup_trials": 1},
                  "percentile": {"percentile": 25.0, "n_startup_trials": 1},
                  "threshold": {"lower": 0.5},
                  "patient": {"patience": 1, "wrapped": {"name": "median", "n_startup_trials": 1}}}
# A trial far below three finished ones: who must prune it (rung-based pruners depend on
# their rungs, so for them only a decision is asked).
MUST_PRUNE = {"median": True, "percentile": True, "threshold": True, "patient": True, "none": False}


@pytest.mark.parametrize("name", list(PRUNERS))
def test_every_pruner_decides_on_reported_epochs(tmp_path, name):
    spec = parse_spec(tiny_space(search={"pruner": {"name": name, **PRUNER_OPTIONS.get(name, {})}}))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", pruner=spec.pruner(),
                                direction="maximize")
    for value in (0.9, 0.8, 0.85):
        trial = study.ask()
        for epoch in (1, 2, 3):
            trial.report(value, epoch)
        study.tell(trial, value)
    bad = study.ask()
    for epoch, value in ((1, 0.2), (2, 0.1), (3, 0.1)):  # patient: worse for `patience` epochs
        bad.report(value, epoch)
    decision = bad.should_prune()
    assert decision in (True, False)
    if name in MUST_PRUNE:
        assert bool(decision) == MUST_PRUNE[name]


GRID = {"lr": {"low": 0.01, "high": 0.05, "step": 0.02}}  # three points


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs_a_real_sweep_to_its_end(colour_folder, tmp_path, monkeypatch, name):
    """A sweep ends with its summary and exit 0: after n_trials, or when the grid runs out."""
    from typer.testing import CliRunner

    from sweeper.cli import app
    from sweeper.testing import write_space

    monkeypatch.chdir(tmp_path)
    doc = tiny_space(colour_folder, study=name, train={"epochs": 1, "batch_size": 16},
                     search={"n_trials": 5 if name == "grid" else 3,
                             "sampler": {"name": name, **({} if name == "grid" else {"seed": 0})},
                             "pruner": "none"},
                     space=GRID if name == "grid" else {"lr": {"low": 0.01, "high": 0.05},
                                                         "label_smoothing": {"low": 0.0, "high": 0.2}})
    result = CliRunner().invoke(app, ["run", "--space", str(write_space(tmp_path / "s.yaml", doc))])
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/studies.db").trials
    assert len(trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert f"study {name}: 3 trials (3 complete, 0 pruned, 0 failed)" in result.output
    if name == "grid":
        assert sorted(round(t.params["lr"], 6) for t in trials) == [0.01, 0.03, 0.05]


@pytest.mark.slow
def test_two_orchestrators_share_a_grid_and_both_end_normally(colour_folder, tmp_path):
    import subprocess
    import sys

    from sweeper.testing import write_space

    doc = tiny_space(colour_folder, study="grid2", train={"epochs": 1, "batch_size": 16},
                     search={"n_trials": 10, "sampler": "grid", "pruner": "none"}, space=GRID)
    space = write_space(tmp_path / "s.yaml", doc)
    procs = [subprocess.Popen([sys.executable, "-m", "sweeper", "run", "--space", str(space)],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert not any("Traceback" in err for _, err in outs)
    trials = optuna.load_study(study_name="grid2", storage=f"sqlite:///{tmp_path}/studies.db").trials
    assert sorted(round(t.params["lr"], 6) for t in trials) == [0.01, 0.03, 0.05]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
