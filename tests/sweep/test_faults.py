"""Faults a long sweep meets, each with real processes, real signals and a real SQLite store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from processes import alive, finish, start, trials, wait_for

from sweeper.testing import tiny_space, write_space

SLOW = {"epochs": 20, "batch_size": 8}  # a few seconds per trial: time to strike mid-trial


def running_with_epochs(cwd: Path, study: str, n: int = 1):
    """The RUNNING trials that have reported at least one epoch, once there are n of them."""
    found = [t for t in trials(cwd, study) if t.state == TrialState.RUNNING and t.intermediate_values]
    return found if len(found) >= n else None


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> list[int]:
    """Every live process below pid (its data-loader workers, say)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def space(cwd, folder, study, **kw):
    return str(write_space(cwd / "space.yaml", tiny_space(folder, study=study, **kw)))


@pytest.mark.slow
def test_worker_killed_by_signal_9_fails_only_its_trial_and_its_retry_resumes(colour_folder, tmp_path):
    spec = space(tmp_path, colour_folder, "kill9", train=SLOW,
                 search={"n_trials": 2, "sampler": "random", "pruner": "none"})
    proc = start(tmp_path, "--space", spec)
    victim = wait_for(lambda: running_with_epochs(tmp_path, "kill9"), what="a trial mid-training")[0]
    os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
    code, out = finish(proc)
    assert code == 0, out
    final = trials(tmp_path, "kill9")
    killed = final[victim.number]
    assert killed.state == TrialState.FAIL
    assert killed.user_attrs["reason"] == "worker killed by signal 9"
    (retry,) = [t for t in final if t.user_attrs.get("retry_of") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    # killed from outside, not for its own reasons: resumed after its last finished epoch
    assert retry.user_attrs["resumed_after_epoch"] >= len(victim.intermediate_values)
    assert sorted(retry.intermediate_values) == list(range(1, SLOW["epochs"] + 1))
    others = [t for t in final if t.number not in (killed.number, retry.number)]
    assert [t.state for t in others] == [TrialState.COMPLETE]


@pytest.mark.slow
def test_orchestrator_killed_leaves_no_orphans_and_the_next_run_recovers(colour_folder, tmp_path):
    spec = space(tmp_path, colour_folder, "lost", train=SLOW,
                 data={"root": str(colour_folder), "image_size": 16, "num_workers": 1},
                 search={"n_trials": 3, "sampler": {"name": "random", "seed": 3}, "pruner": "none"})
    args = ["--space", spec, "--workers", "2", "--heartbeat", "0.5"]
    proc = start(tmp_path, *args)
    victims = wait_for(lambda: running_with_epochs(tmp_path, "lost", 2), what="two trials mid-training")
    workers = [t.user_attrs["worker_pid"] for t in victims]
    pids = workers + [p for w in workers for p in descendants(w)]
    assert len(pids) > len(workers)  # data-loader processes are among them
    # the orchestrator's one warm fork server started both workers; it must go too
    servers = {parent(w) for w in workers}
    assert proc.pid not in servers and len(servers) == 1
    assert all("sweeper.sweep.fork_server" in Path(f"/proc/{s}/cmdline").read_text() for s in servers)
    pids += sorted(servers)
    proc.kill()
    proc.wait()
    wait_for(lambda: not any(alive(p) for p in pids), timeout=20, what="workers to exit")

    code, out = finish(start(tmp_path, *args))
    assert code == 0, out
    assert "its orchestrator is gone" in out
    final = trials(tmp_path, "lost")
    assert not [t for t in final if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    lost = [t for t in final if t.user_attrs.get("reason") == "orchestrator lost"]
    assert sorted(t.number for t in lost) == sorted(t.number for t in victims)
    assert all(t.state == TrialState.FAIL for t in lost)
    retries = [t for t in final if "retry_of" in t.user_attrs]
    assert sorted(t.user_attrs["retry_of"] for t in retries) == sorted(t.number for t in lost)
    for retry in retries:
        assert retry.params == final[retry.user_attrs["retry_of"]].params
    # n_trials outcomes, the lost attempts besides; no param set twice but for the retries
    counted = [t for t in final if not t.user_attrs.get("requeued")]
    assert len(counted) == 3 and all(t.state == TrialState.COMPLETE for t in counted)
    seen = Counter(t.params["lr"] for t in final)
    assert sorted(seen.values(), reverse=True)[:2] == [2, 2] and sum(seen.values()) == 5


@pytest.mark.slow
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_records_interrupted_requeues_and_resumes(colour_folder, tmp_path, presses):
    spec = space(tmp_path, colour_folder, "ctrlc", train=SLOW,
                 search={"n_trials": 2, "sampler": "random", "pruner": "none"})
    proc = start(tmp_path, "--space", spec)
    victim = wait_for(lambda: running_with_epochs(tmp_path, "ctrlc"), what="a trial mid-training")[0]
    for _ in range(presses):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    code, out = finish(proc)
    assert code == 130, out
    assert "Traceback" not in out and "queued again" in out
    after = trials(tmp_path, "ctrlc")
    assert not [t for t in after if t.state == TrialState.RUNNING]
    stopped = after[victim.number]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["reason"] == "interrupted"
    assert not alive(stopped.user_attrs["worker_pid"])
    waiting = [t for t in after if t.state == TrialState.WAITING]
    assert len(waiting) == 1
    code, out = finish(start(tmp_path, "--space", spec))
    assert code == 0, out
    final = trials(tmp_path, "ctrlc")
    retry = [t for t in final if t.user_attrs.get("retry_of") == victim.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == stopped.params


@pytest.mark.slow
def test_hung_worker_is_killed_after_the_trial_timeout(colour_folder, tmp_path):
    spec = space(tmp_path, colour_folder, "hang", search={"n_trials": 2, "sampler": "random",
                                                          "pruner": "none"})
    code, out = finish(start(tmp_path, "--space", spec, "--trial-timeout", "15",
                             env={"SWEEPER_INJECT_FAULT": "hang:0"}))
    assert code == 0, out
    hung, ok = trials(tmp_path, "hang")
    assert hung.state == TrialState.FAIL and hung.user_attrs["reason"].startswith("timeout")
    assert not alive(hung.user_attrs["worker_pid"])
    assert ok.state == TrialState.COMPLETE


@pytest.mark.slow
@pytest.mark.parametrize("fault, reason", [
    ("oom", "out of memory in training step at batch_size=16: CUDA out of memory. Tried to allocate 2.00 GiB (injected)"),
    ("host_oom", "out of memory in training step at batch_size=16: MemoryError"),
    ("oom_val", "out of memory in validation at batch_size=16: CUDA out of memory. Tried to allocate 2.00 GiB (injected)")])
def test_out_of_memory_fails_the_trial_with_where_and_its_batch_size(colour_folder, tmp_path, fault, reason):
    spec = space(tmp_path, colour_folder, "oom", search={"n_trials": 2, "sampler": "random",
                                                         "pruner": "none"})
    code, out = finish(start(tmp_path, "--space", spec, env={"SWEEPER_INJECT_FAULT": f"{fault}:0"}))
    assert code == 0, out
    oom, ok = trials(tmp_path, "oom")
    assert oom.state == TrialState.FAIL
    assert oom.user_attrs["reason"] == reason
    assert ok.state == TrialState.COMPLETE


@pytest.mark.slow
def test_out_of_memory_beside_another_trial_is_retried_alone(colour_folder, tmp_path):
    """Two slots share the host's memory (as trials share a GPU): trial 1's out-of-memory may be
    its neighbour's doing, so it is retried once with the device to itself."""
    spec = space(tmp_path, colour_folder, "shared", train={"epochs": 3, "batch_size": 8},
                 search={"n_trials": 4, "sampler": "random", "pruner": "none"})
    code, out = finish(start(tmp_path, "--space", spec, "--workers", "2", "--gpus", "none",
                             env={"SWEEPER_INJECT_FAULT": "host_oom:1"}))
    assert code == 0, out
    found = trials(tmp_path, "shared")
    first = found[1]
    assert first.state == TrialState.FAIL
    assert first.user_attrs["reason"] == ("out of memory while sharing the CPU host's memory with other trials, "
                                          "retried alone: out of memory in training step at batch_size=8: MemoryError")
    (retry,) = [t for t in found if t.user_attrs.get("retry_of") == 1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["alone"] is True
    assert retry.params == first.params
    # while the retry's worker trained, no other trial's did (it was held until its device was free)
    (alone_from, alone_to), = retry.user_attrs["segments"]
    for other in found:
        for start_s, end_s in other.user_attrs.get("segments", []) if other.number != retry.number else []:
            assert end_s <= alone_from or start_s >= alone_to, (other.number, start_s, end_s, alone_from, alone_to)
    assert sum(t.state == TrialState.COMPLETE for t in found) == 4


@pytest.mark.slow
def test_non_finite_loss_is_pruned_and_never_best(colour_folder, tmp_path):
    spec = space(tmp_path, colour_folder, "nan",
                 search={"n_trials": 2, "sampler": "random", "pruner": "none"},
                 space={"lr": [1.0e12, 0.05]}, enqueue=[{"lr": 1.0e12}, {"lr": 0.05}])
    code, out = finish(start(tmp_path, "--space", spec))
    assert code == 0, out
    diverged, ok = trials(tmp_path, "nan")
    assert diverged.state == TrialState.PRUNED
    assert diverged.user_attrs["reason"] == "non-finite loss"
    study = optuna.load_study(study_name="nan", storage=f"sqlite:///{tmp_path}/studies.db")
    assert study.best_trial.number == ok.number


@pytest.mark.slow
def test_two_orchestrators_share_one_sqlite_study_exactly(colour_folder, tmp_path):
    spec = space(tmp_path, colour_folder, "pair", search={"n_trials": 6, "sampler": "random",
                                                          "pruner": "none"})
    procs = [start(tmp_path, "--space", spec, "--workers", "2") for _ in range(2)]
    results = [finish(p) for p in procs]
    for code, out in results:
        assert code == 0, out
        assert "database is locked" not in out
    final = trials(tmp_path, "pair")
    assert len(final) == 6 and all(t.state == TrialState.COMPLETE for t in final)
    assert len({t.user_attrs["worker_pid"] for t in final}) == 6


@pytest.mark.slow
def test_only_the_best_k_keep_checkpoints(colour_folder, tmp_path):
    spec = space(tmp_path, colour_folder, "ckpt", search={"n_trials": 4, "sampler": "random",
                                                          "pruner": "none"},
                 space={"lr": {"low": 0.001, "high": 0.3, "log": True}})
    code, out = finish(start(tmp_path, "--space", spec, "--keep-checkpoints", "2"))
    assert code == 0, out
    done = sorted(trials(tmp_path, "ckpt"), key=lambda t: t.value, reverse=True)
    kept = [t.number for t in done if (Path(t.user_attrs["trial_dir"]) / "checkpoint.pth").exists()]
    assert kept == [t.number for t in done[:2]]
    state = torch.load(Path(done[0].user_attrs["trial_dir"]) / "checkpoint.pth", weights_only=True)
    assert state["classes"] == ["class_0", "class_1", "class_2"] and "fc.weight" in state["state_dict"]


@pytest.mark.slow
def test_full_disk_while_checkpointing_fails_that_trial_only(colour_folder, tmp_path):
    spec = space(tmp_path, colour_folder, "disk", search={"n_trials": 2, "sampler": "random",
                                                          "pruner": "none"})
    code, out = finish(start(tmp_path, "--space", spec, env={"SWEEPER_INJECT_FAULT": "disk_full:0"}))
    assert code == 0, out
    full, ok = trials(tmp_path, "disk")
    assert full.state == TrialState.FAIL
    assert "could not write checkpoint" in full.user_attrs["reason"]
    assert "No space left on device" in full.user_attrs["reason"]
    assert not list(Path(full.user_attrs["trial_dir"]).glob("checkpoint*"))
    assert ok.state == TrialState.COMPLETE


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_store_is_reported_and_never_rewritten(colour_folder, tmp_path, damage):
    db = tmp_path / "studies.db"
    if damage == "garbage":
        db.write_bytes(b"this is not a database" * 100)
    else:
        optuna.create_study(study_name="x", storage=f"sqlite:///{db}")
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    before = db.read_bytes()
    spec = space(tmp_path, colour_folder, "damaged")
    for args in (["run", "--space", spec], ["report", "--study", "x"], ["studies"]):
        out = subprocess.run([sys.executable, "-m", "sweeper", *args], cwd=tmp_path,
                             capture_output=True, text=True)
        assert out.returncode == 2, out.stderr
        assert "is damaged" in out.stderr and "left untouched" in out.stderr
        assert "Traceback" not in out.stderr
        assert db.read_bytes() == before


@pytest.mark.slow
def test_ctrl_c_during_recheck_leaves_nothing_queued_and_recheck_again_finishes(colour_folder, tmp_path):
    train = {"epochs": 8, "batch_size": 8}  # three of these runs: shorter than SLOW
    spec = space(tmp_path, colour_folder, "rcc", train=train,
                 search={"n_trials": 1, "sampler": "random", "pruner": "none"})
    code, out = finish(start(tmp_path, "--space", spec))
    assert code == 0, out
    recheck = ["-m", "sweeper", "recheck", "--study", "rcc", "--top", "1", "--seeds", "2"]
    proc = subprocess.Popen([sys.executable, *recheck], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    victim = wait_for(lambda: running_with_epochs(tmp_path, "rcc"), what="a re-check mid-training")[0]
    proc.send_signal(signal.SIGINT)
    code, out = finish(proc)
    assert code == 130, out
    assert "`sweeper recheck` again trains the runs still missing" in out and "Traceback" not in out
    after = trials(tmp_path, "rcc")
    assert after[victim.number].state == TrialState.FAIL
    assert after[victim.number].user_attrs["reason"] == "interrupted"
    assert not [t for t in after if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    done = subprocess.run([sys.executable, *recheck], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    final = trials(tmp_path, "rcc")
    reruns = [t for t in final if t.state == TrialState.COMPLETE and "recheck_of" in t.user_attrs]
    assert sorted(t.user_attrs["recheck_seed"] for t in reruns) == [1, 2]
    assert all(len(t.intermediate_values) == train["epochs"] for t in reruns)  # never pruned
