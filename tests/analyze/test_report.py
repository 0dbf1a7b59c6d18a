"""`sweeper report` on real study stores: sections, figures, edge cases, and a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess

import pandas as pd
import pytest
from typer.testing import CliRunner

from sweeper.analyze.report_data import collect
from sweeper.cli import app
from sweeper.testing import make_study

runner = CliRunner()
SECTIONS = ["Summary", "Top trials", "Hyperparameter importance", "Optimization history",
            "Learning curves", "Parallel coordinates", "Slice plots", "Contour", "Timeline"]


def _report(tmp_path, name):
    out = tmp_path / f"{name}.html"
    result = runner.invoke(app, ["report", "--study", name, "--storage", f"sqlite:///{tmp_path}/s.db",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out.read_text(), out


@pytest.fixture
def full_study(tmp_path):
    return make_study(f"sqlite:///{tmp_path}/s.db", "full", complete=8, pruned=4, failed=1)


def test_data_counts_best_and_epochs_saved(full_study):
    data = collect(full_study)
    assert data.counts == {"COMPLETE": 8, "PRUNED": 4, "FAIL": 1, "RUNNING": 0}
    assert data.best.value == max(t.value for t in full_study.trials if t.value is not None)
    assert data.epochs_saved == 4 * 3  # each pruned trial ran 1 of 4 epochs
    assert set(data.importance.by_evaluator) == {"PED-ANOVA", "fANOVA"}
    # lr drives the value in make_study, and both evaluators find it
    for values in data.importance.by_evaluator.values():
        assert max(values, key=values.get) == "lr"
    assert data.importance_with_pruned is not None and data.importance_with_pruned.n_trials == 12


def test_trials_pruned_at_a_half_epoch_rung_count_in_the_importance_with_pruned(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from sweeper.search.asha import PART_VALUES

    study = make_study(f"sqlite:///{tmp_path}/s.db", "half", complete=8, pruned=0, failed=0)
    for t in study.get_trials()[:4]:  # the same configurations, pruned at the 0.5 rung (no whole epoch)
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.PRUNED, params=t.params, distributions=t.distributions,
            user_attrs={PART_VALUES: {"0.5": t.value / 8}, "reason": "pruned at epoch 0.5"}))
    data = collect(study)
    assert data.importance_with_pruned is not None and data.importance_with_pruned.n_trials == 12


def test_report_has_every_section_best_params_and_one_figure_per_plot(tmp_path, full_study):
    text, out = _report(tmp_path, "full")
    for section in SECTIONS:
        assert f">{section}</h2>" in text
    best = collect(full_study).best
    assert f"trial {best.number}: val_acc {best.value:.4f}" in text
    assert f"lr={best.params['lr']}" in text
    # importance x2 (completed; completed + pruned), history, curves, parallel, slice, contour,
    # timeline
    assert len(re.findall(r'class="plotly-graph-div"', text)) == 8
    assert text.count("plotly.js v") <= 2  # the library embedded once (its banner)
    assert "Cannot be shown yet" not in text
    assert "PED-ANOVA and fANOVA over 8 completed trials" in text
    csv = pd.read_csv(out.parent / "trials.csv")
    assert len(csv) == 13 and {"number", "state", "value", "params_lr", "epochs_run",
                               "duration_s", "reason"} <= set(csv.columns)


@pytest.mark.parametrize("complete", [0, 1, 2])
def test_small_studies_still_get_a_report_saying_what_is_missing(tmp_path, complete):
    make_study(f"sqlite:///{tmp_path}/s.db", "small", complete=complete, pruned=1)
    text, _ = _report(tmp_path, "small")
    for section in SECTIONS:
        assert f">{section}</h2>" in text
    assert "Cannot be shown yet: needs at least 3 completed trials" in text
    if complete == 0:
        assert "no completed trial yet" in text


def test_report_of_a_missing_study_names_the_ones_there(tmp_path, full_study):
    result = runner.invoke(app, ["report", "--study", "nope", "--storage", f"sqlite:///{tmp_path}/s.db"])
    assert result.exit_code == 2
    assert "study 'nope' not found in the store; studies there: full" in result.output


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no chromium (.ci/run installs Debian's)")
def test_report_renders_in_headless_chromium_without_js_errors(tmp_path, full_study):
    _, out = _report(tmp_path, "full")
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=10000", "--dump-dom", out.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    console_errors = [line for line in done.stderr.splitlines()
                      if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]
    assert not console_errors
    # plotly draws each figure as <svg class="main-svg">; every figure rendered
    assert dom.count('class="plot-container plotly"') == 8
    assert dom.count('class="main-svg"') >= 8
