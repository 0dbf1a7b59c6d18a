"""Driving `sweeper run` as a real process from tests: start, wait, read its store, check pids."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import optuna


def start(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweeper", "run", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def trials(cwd: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials as of one moment: optuna reads a trial's attributes and its values in
    separate queries, between which a running sweep may write (an epoch's value seen before the
    worker_pid written ahead of it), so it reads a consistent copy of the database."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "snapshot.db"
        with closing(sqlite3.connect(f"file:{cwd}/studies.db?mode=ro", uri=True)) as src, \
                closing(sqlite3.connect(copy)) as dst:
            src.backup(dst)
        storage = optuna.storages.RDBStorage(f"sqlite:///{copy}")
        try:
            return sorted(optuna.load_study(study_name=study, storage=storage).get_trials(),
                          key=lambda t: t.number)
        finally:
            storage.engine.dispose()


def wait_for(predicate, timeout: float = 120, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = predicate()
        except Exception:  # the store may not exist yet
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")
