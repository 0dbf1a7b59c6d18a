"""Benchmark scripts work (their `--quick` mode); their figures are never asserted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from search import STRATEGY_SIDES  # noqa: E402  benchmarks/search.py: the strategies replay.py compares


@pytest.mark.slow
def test_contention_quick_prints_its_table():
    done = subprocess.run([sys.executable, "benchmarks/contention.py", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-5].split()[:4] == ["case", "sweep", "A", "sweep"]
    assert lines[-4].startswith("one sweep alone")
    assert lines[-3].startswith("two at once, sharing the cores (default)")
    assert lines[-2].startswith("two at once, each taking every core (old)")


def _quick(script: str, *args: str) -> list[str]:
    done = subprocess.run([sys.executable, f"benchmarks/{script}", "--quick", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()


@pytest.mark.slow
def test_throughput_quick_prints_a_b_and_c():
    lines = _quick("throughput.py")
    assert [line[:4] for line in lines[-5:-1]] == ["(a) ", "(b) ", "(b')", "(c) "]
    assert lines[-1].startswith("a/b = ") and "a/c = " in lines[-1]


@pytest.mark.slow
def test_overhead_quick_prints_trial_costs_report_time_and_sampler_time():
    lines = _quick("overhead.py")
    text = "\n".join(lines)
    for label in ("ask -> first step (s)", "epoch report round trip (ms)", "last epoch -> tell (s)",
                  "sweeper report", "tpe (multi-fidelity): ask + suggest",
                  "tpe (multi_fidelity: false): ask + suggest", "random: ask + suggest"):
        assert label in text, label
    assert lines[-4].startswith("sweeper report") and lines[-4].rstrip().endswith("(target <= 15 s)")


@pytest.mark.slow
def test_memory_quick_prints_one_and_four_workers():
    lines = _quick("memory.py")
    assert lines[-3].startswith("memory-mapped (sweeper)")
    assert lines[-2].startswith("private copy per worker (before)")
    for line in lines[-3:-1]:  # "<1 worker> MB <4 workers> MB <ratio>"
        assert [w for w in line.split()[-5:] if not w[0].isdigit()] == ["MB", "MB"]


@pytest.mark.slow
def test_search_quick_prints_every_side():
    lines = _quick("search.py")
    sides = [line.split("  ")[0] for line in lines[-6:-1]]
    assert sides == ["grid (manual configurations)", "tpe + asha (mf)", "tpe + asha (final)", "random + asha",
                     "1-epoch"]
    assert lines[-1].startswith("target (mf median at its budget > 1-epoch and random + asha medians")
    tested = lines.index("Test accuracy of the configuration each run returned, per sampler seed; "
                         "difference from 1-epoch with the same seed")
    assert [line.split("  ")[0] for line in lines[tested + 1:tested + 6]] == sides
    assert all(0 <= float(line.split()[-1 if "vs 1-epoch" not in line else line.split().index("vs") - 1]) <= 1
               for line in lines[tested + 1:tested + 6])


@pytest.mark.slow
def test_the_live_check_of_half_epoch_screening_runs_and_scores_each_answer():
    """benchmarks/README's live check (1-epoch against screen (uniform, 1/2)): the screening
    side's trials pause at half an epoch, which its epoch timeline reads (it crashed on 0.5)."""
    lines = _quick("search.py", "--sides", "oneepoch,screenuh")
    tested = lines.index("Test accuracy of the configuration each run returned, per sampler seed; "
                         "difference from 1-epoch with the same seed")
    base, screen = lines[tested + 1].split(), lines[tested + 2].split()
    assert base[0] == "1-epoch" and 0 < float(base[1]) <= 1
    assert " ".join(screen[:3]) == "screen (uniform, 1/2)" and 0 < float(screen[3]) <= 1
    assert screen[4:6] == ["vs", "1-epoch:"]


@pytest.mark.slow
def test_artifacts_quick_prints_save_upload_and_stall_ratios():
    lines = _quick("artifacts.py")
    assert lines[-3].split()[:2] == ["model", "state"]
    row = lines[-2].split()
    assert row[0] == "test_resnet" and row[-1].endswith("x") and row[-2].endswith("x")


def _gpu_listed() -> bool:
    """What gpu_check.sh asks first: does nvidia-smi list a GPU here?"""
    if not shutil.which("nvidia-smi"):
        return False
    return "GPU " in subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout


def test_gpu_check_parses_and_refuses_at_once_without_a_gpu(tmp_path):
    """On a GPU machine the check runs for minutes (benchmarks/README.md), so this test is for
    machines without one: one line, exit 2, nothing started, before any wheel is installed."""
    for script in ("gpu_check.sh", "gpu_wheels.sh"):
        assert subprocess.run(["bash", "-n", f"benchmarks/{script}"], cwd=ROOT).returncode == 0, script
    compile((ROOT / "benchmarks" / "gpu_check.py").read_text(), "gpu_check.py", "exec")
    if _gpu_listed():
        pytest.skip("a GPU machine: run bash benchmarks/gpu_check.sh itself")
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, env=env)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("gpu_check: no GPU: ")
    assert list(tmp_path.iterdir()) == []  # no wheel installed, no sweep folder made


@pytest.mark.slow
def test_report_errors_quick_prints_report_with_and_without_the_section():
    lines = _quick("report_errors.py")
    assert lines[-4].startswith("sweeper report --no-errors") and lines[-4].split()[-1] == "1.00"
    assert lines[-3].startswith("sweeper report (with the error section)")
    assert lines[-1].startswith("the section's cost: ")


@pytest.mark.slow
def test_curves_quick_records_a_table_with_val_and_test():
    lines = _quick("curves.py")
    header = lines.index("config seed epoch val_acc test_acc seconds status")
    rows = [line.split() for line in lines[header + 1:]]
    assert len(rows) >= 2 and all(r[-1] == "ok" and 0 <= float(r[3]) <= 1 and 0 <= float(r[4]) <= 1 for r in rows)


@pytest.mark.slow
def test_replay_quick_prints_every_strategy_at_every_budget(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/replay.py", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("quick: 8 configurations (4 known) x 2 seeds, 4 epochs; grid 16 epochs; 3 optimizer seeds")
    assert "Best mean test acc over seeds: " in lines[0] and "Spearman rho of val at 1/2, 1, 2 epochs" in lines[0]
    assert lines[1].split()[:2] == ["budget", "strategy"] and "vs grid: median [95% CI] win" in lines[1]
    assert lines[2].startswith("full") and "grid (known, full)" in lines[2]
    sides = list(STRATEGY_SIDES)  # tpe + asha (mf), ..., 1-epoch, 1/2-epoch, screen (prior), ...
    for i, budget in enumerate(("1/8", "1/4", "1/2")):
        for j, strategy in enumerate(sides):
            line = lines[3 + len(sides) * i + j]
            assert line.startswith(budget) and strategy in line, line
    end = 3 + 3 * len(sides)
    assert lines[end] == "replays over their epoch budget: 0; without an answer (scored 0): 0"
    replays = 3 * (1 + 3 * len(sides))
    assert lines[-1].startswith(f"{replays} replays in ") and lines[-1].endswith(
        f"written to {tmp_path}/runs.csv, summary.csv, summary.md")
    assert len((tmp_path / "runs.csv").read_text().splitlines()) == 1 + replays
    assert (tmp_path / "summary.md").read_text().count("| 1/4 (4) |") == len(sides)
