"""CPU workers on one host share its cores: a host-wide registry of live workers, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.cpu_share import CpuShare, host_cores
from sweeper.testing import tiny_space, write_space


def _registered_sleeper(registry: Path) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from sweeper.cpu_share import CpuShare
        CpuShare(Path({str(registry)!r}), cores=4)
        print("registered", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "registered"
    return proc


def test_threads_follow_the_live_workers_and_killed_ones_are_forgotten(tmp_path):
    registry = tmp_path / "registry"
    before = torch.get_num_threads()
    others = [_registered_sleeper(registry), _registered_sleeper(registry)]
    (registry / f"{os.getpid()}-1").touch()  # this pid, but another process start: a reused pid
    (registry / "999999999-5").touch()  # a pid that is not running
    try:
        share = CpuShare(registry, cores=4)
        assert share.apply() == 1 and torch.get_num_threads() == 1  # 3 live workers, 4 cores
        assert "CPU threads: 1 (3 sweeper worker(s) on 4 cores)" == share.describe()
        assert sorted(p.name.split("-")[0] for p in registry.iterdir()) == \
            sorted(str(p) for p in [os.getpid(), others[0].pid, others[1].pid])
        others[0].send_signal(signal.SIGKILL)
        others[0].wait()
        assert share.apply() == 2 and torch.get_num_threads() == 2  # 2 live workers
        assert not any(p.name.startswith(f"{others[0].pid}-") for p in registry.iterdir())
        share.close()
        assert share.apply() == 4  # unregistered: only the sleeper is left, 4 // 1
    finally:
        for p in others:
            p.kill()
        torch.set_num_threads(before)


def test_sweeper_cpu_cores_gives_sweeper_part_of_the_machine(monkeypatch):
    allowed = len(os.sched_getaffinity(0))
    monkeypatch.setenv("SWEEPER_CPU_CORES", "1")
    assert host_cores() == 1
    monkeypatch.setenv("SWEEPER_CPU_CORES", str(allowed + 7))  # never more than it may run on
    assert host_cores() == allowed
    monkeypatch.setenv("SWEEPER_CPU_CORES", "all of them")  # not a number: the affinity
    assert host_cores() == allowed


def test_a_worker_on_one_core_still_says_when_another_starts_sharing_it(tmp_path):
    registry = tmp_path / "registry"
    before = torch.get_num_threads()
    share = CpuShare(registry, cores=1)
    try:
        assert share.apply() == 1 and share.apply() is None  # nothing changed: nothing to log
        other = _registered_sleeper(registry)
        assert share.apply() == 1  # the same one thread, but the log says who shares the core
        assert share.describe() == "CPU threads: 1 (2 sweeper worker(s) on 1 cores)"
        other.kill()
        other.wait()
        assert share.apply() == 1 and share.describe() == "CPU threads: 1 (1 sweeper worker(s) on 1 cores)"
    finally:
        share.close()
        torch.set_num_threads(before)


@pytest.mark.slow
def test_two_cpu_workers_of_a_sweep_each_take_their_share(colour_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWEEPER_CPU_REGISTRY", str(tmp_path / "registry"))
    space = write_space(tmp_path / "space.yaml", tiny_space(
        colour_folder, study="share", train={"epochs": 60, "batch_size": 8},  # seconds: overlapping
        search={"n_trials": 2, "sampler": {"name": "random", "seed": 0}, "pruner": "none"}))
    result = CliRunner().invoke(app, ["run", "--space", str(space), "--workers", "2"])
    assert result.exit_code == 0, result.output
    cores = host_cores()
    expected = f"CPU threads: {max(1, cores // 2)} (2 sweeper worker(s) on {cores} cores)"
    for n in (0, 1):
        assert expected in (tmp_path / "trials/share" / str(n) / "log.txt").read_text()
    assert list((tmp_path / "registry").iterdir()) == []  # both unregistered at exit
