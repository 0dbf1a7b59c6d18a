"""`precision: auto` on a CPU whose bf16 kernels misbehave: checked once per machine, the sweep
falls back (oneDNN capped below AMX, or fp32) and says so. SWEEPER_BF16_CHECK makes any CPU's
check see non-finite bf16 losses. (This machine, an AMD EPYC without AMX, cannot show AMX's own
faults or what AMX gains where it works.)"""

from __future__ import annotations

import json

import optuna
import pytest
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.testing import tiny_space, write_space
from sweeper.train import bf16_check

runner = CliRunner()


@pytest.fixture
def fresh_machine(tmp_path, monkeypatch):
    """No cached verdict, no oneDNN cap of the suite's, and whatever the sweep sets in this
    process's environment for its workers undone afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in (bf16_check.ISA_ENV, bf16_check.CPU_BF16_ENV):
        monkeypatch.setenv(name, "")  # recorded, so that teardown restores the suite's value
        monkeypatch.delenv(name)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("forced, then, trained", [
    ("nan-amx", "CPU workers train bf16 with ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16", "bf16"),
    ("nan", "and a non-finite bf16 loss at step 1 of run 1 with ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16; "
            "CPU workers train in fp32", "fp32"),
])
def test_a_cpu_whose_bf16_is_broken_falls_back_and_the_sweep_says_so(fresh_machine, monkeypatch, forced,
                                                                      then, trained):
    monkeypatch.setenv(bf16_check.FORCE_ENV, forced)
    space = write_space(fresh_machine / "s.yaml", tiny_space(
        search={"n_trials": 1}, train={"epochs": 1, "precision": "auto"}))
    result = runner.invoke(app, ["run", "--space", str(space)])
    assert result.exit_code == 0, result.output
    assert ("precision auto: bf16 on this CPU gave a non-finite bf16 loss at step 1 of run 1 with "
            "oneDNN's default kernels") in result.output
    assert then in result.output
    [trial] = optuna.load_study(study_name="tiny", storage="sqlite:///studies.db").trials
    assert trial.state.name == "COMPLETE" and trial.user_attrs["precision"] == trained
    [cached] = (fresh_machine / "cache" / "sweeper").glob("bf16-check-*.json")
    assert json.loads(cached.read_text())["bf16"] == (trained == "bf16")


def test_the_verdict_is_checked_once_per_machine(fresh_machine, monkeypatch):
    monkeypatch.setenv(bf16_check.FORCE_ENV, "nan")
    cache = bf16_check._cache_file()
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"bf16": False, "isa": None, "why": "found before"}))
    found = bf16_check.verdict()  # from the cache: no probe runs (it would see NaN and say more)
    assert (found.bf16, found.why) == (False, "found before")
    assert found.env() == {bf16_check.CPU_BF16_ENV: "0"}
    assert found.message() == ("precision auto: found before; CPU workers train in fp32 "
                               "(checked once per machine, cached)")


def test_fp32_and_bf16_sweeps_never_pay_for_the_check(fresh_machine, monkeypatch):
    monkeypatch.setenv(bf16_check.FORCE_ENV, "nan")
    space = write_space(fresh_machine / "s.yaml", tiny_space(search={"n_trials": 1}, train={"epochs": 1}))
    result = runner.invoke(app, ["run", "--space", str(space)])  # tiny_space trains in fp32
    assert result.exit_code == 0 and "precision auto" not in result.output
    assert not (fresh_machine / "cache").exists()


@pytest.mark.slow
def test_recheck_checks_too(fresh_machine, monkeypatch):
    monkeypatch.setenv(bf16_check.FORCE_ENV, "nan")
    space = write_space(fresh_machine / "s.yaml", tiny_space(
        study="rc", search={"n_trials": 1}, train={"epochs": 1, "precision": "auto"}))
    (fresh_machine / "runs.csv").write_text("lr,val_acc\n0.05,0.5\n")
    imported = runner.invoke(app, ["import", "--study", "rc", "--space", str(space), "--from", "runs.csv"])
    assert imported.exit_code == 0, imported.output
    result = runner.invoke(app, ["recheck", "--study", "rc", "--top", "1", "--seeds", "1"])
    assert result.exit_code == 0, result.output
    assert "CPU workers train in fp32" in result.output
    rerun = [t for t in optuna.load_study(study_name="rc", storage="sqlite:///studies.db").trials
             if "recheck_of" in t.user_attrs]
    assert [t.user_attrs["precision"] for t in rerun] == ["fp32"]
