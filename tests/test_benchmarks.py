"""Benchmark scripts work (their `--quick` mode); their figures are never asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_contention_quick_prints_its_table():
    done = subprocess.run([sys.executable, "benchmarks/contention.py", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-5].split()[:4] == ["case", "sweep", "A", "sweep"]
    assert lines[-4].startswith("one sweep alone")
    assert lines[-3].startswith("two at once, sharing the cores (default)")
    assert lines[-2].startswith("two at once, each taking every core (old)")
