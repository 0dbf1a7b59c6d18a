"""One study on several machines: orchestrators with a trials dir each (standing in for machines)
share a study store and an artifact store (a folder, or a real S3-compatible server). A machine
is lost with kill -9 and its trials dir deleted; another carries on from the artifact store."""

from __future__ import annotations

import csv
import io
import json
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest
import stores
from optuna.trial import TrialState
from processes import alive, finish, start, trials, wait_for

from sweeper.testing import tiny_space, write_space

DATA = {"image_size": 16, "num_workers": 0}  # num_workers 0: resumed trials match bit for bit


@pytest.fixture(scope="module", autouse=True)
def _stop_s3_server():
    yield
    stores.stop_server()


def sweeper(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "sweeper", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def lose_machine(proc: subprocess.Popen, trials_dir: Path, worker_pids: list[int]) -> None:
    """kill -9 the orchestrator (its workers die with it), then its disk."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not any(alive(p) for p in worker_pids), timeout=20, what="its workers to exit")
    shutil.rmtree(trials_dir)


def metas(trial: optuna.trial.FrozenTrial, storage: str) -> dict[str, str]:
    """{filename: artifact id}, as Optuna's own API lists a trial's artifacts."""
    found = optuna.artifacts.get_all_artifact_meta(trial, storage=optuna.storages.get_storage(storage))
    return {m.filename: m.artifact_id for m in found}


def one_trial(colour_folder, study: str, epochs: int) -> dict:
    """A study of one trial, the same one on every machine (random sampler, seed 1)."""
    return tiny_space(colour_folder, study=study, data=DATA, train={"epochs": epochs, "batch_size": 8},
                      search={"n_trials": 1, "sampler": {"name": "random", "seed": 1}, "pruner": "none"})


@pytest.fixture(scope="module")
def uninterrupted(colour_folder, tmp_path_factory):
    """The lost-machine tests' trial, never interrupted, on a machine of its own (both stores share it)."""
    reference = tmp_path_factory.mktemp("reference")
    spec = write_space(reference / "space.yaml", one_trial(colour_folder, "moved", 8))
    code, out = finish(start(reference, "--space", str(spec)))
    assert code == 0, out
    return trials(reference, "moved")[0]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "s3"])
def test_a_trial_lost_with_its_machine_resumes_on_another_with_uninterrupted_metrics(
        kind, colour_folder, tmp_path, monkeypatch, uninterrupted):
    url = stores.make(kind, tmp_path, monkeypatch)
    spec = str(write_space(tmp_path / "space.yaml", one_trial(colour_folder, "moved", 8)))

    # machine A: 2 s between epochs (a test hook), so it can be lost mid-trial
    a = start(tmp_path, "--space", spec, "--trials-dir", "machine-a", "--artifacts", url, "--heartbeat", "0.5",
              env={"SWEEPER_INJECT_FAULT": "slow:0"})
    victim = wait_for(lambda: next((t for t in trials(tmp_path, "moved") if len(t.intermediate_values) >= 3), None),
                      what="three epochs on machine A")
    lose_machine(a, tmp_path / "machine-a", [victim.user_attrs["worker_pid"]])

    # machine B is told nothing about the artifact store when it is a folder: the study knows it
    args = ["--artifacts", url] if kind == "s3" else []
    code, out = finish(start(tmp_path, "--space", spec, "--trials-dir", "machine-b", "--heartbeat", "0.5", *args))
    assert code == 0, out
    assert "trial 0: its orchestrator is gone" in out
    lost, retry = trials(tmp_path, "moved")
    assert lost.state == TrialState.FAIL and lost.user_attrs["reason"] == "orchestrator lost"
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == 0
    # resumed from the store (machine A's disk is gone) after its last stored epoch, ...
    assert retry.user_attrs["resumed_after_epoch"] >= 2
    assert retry.user_attrs["resumed_from"].startswith("artifact:")
    # ... with the metrics of the uninterrupted run, exactly
    assert retry.intermediate_values == uninterrupted.intermediate_values
    assert retry.value == uninterrupted.value
    assert retry.user_attrs["upload_s"] >= 0  # per epoch, beside the next one
    # the store holds exactly what the study lists: no resume state left behind
    storage = f"sqlite:///{tmp_path}/studies.db"
    listed = set(metas(retry, storage).values()) | set(metas(lost, storage).values())
    study = optuna.load_study(study_name="moved", storage=storage)
    listed |= {m.artifact_id for m in optuna.artifacts.get_all_artifact_meta(study)}  # the split lists
    assert stores.listing(url) == listed
    assert {"config.json", "metrics.csv", "log.txt", "checkpoint.pth"} <= set(metas(retry, storage))


@pytest.mark.slow
def test_asha_paused_trial_of_a_lost_machine_is_promoted_by_another(colour_folder, tmp_path, monkeypatch):
    url = stores.make("folder", tmp_path, monkeypatch)
    # one rung, at epoch 1; a good configuration first, then two hopeless ones (lr ~ 0)
    doc = tiny_space(colour_folder, study="asha", data=DATA, train={"epochs": 2, "batch_size": 8},
                     search={"n_trials": 3, "sampler": {"name": "random", "seed": 0},
                             "pruner": {"name": "asha", "min_resource": 1, "reduction_factor": 2}},
                     space={"lr": [0.05, 1.0e-6, 2.0e-6]},
                     enqueue=[{"lr": 0.05}, {"lr": 1.0e-6}, {"lr": 2.0e-6}])
    spec = str(write_space(tmp_path / "space.yaml", doc))
    # machine A: trial 0 is alone at rung 1, so it pauses; trial 1 hangs (a test hook) until A is lost
    a = start(tmp_path, "--space", spec, "--trials-dir", "machine-a", "--artifacts", url, "--heartbeat", "0.5",
              env={"SWEEPER_INJECT_FAULT": "hang:1"})
    paused, hung = wait_for(lambda: (t := trials(tmp_path, "asha")) and t[0].user_attrs.get("paused")
                            and t[1].state == TrialState.RUNNING and "worker_pid" in t[1].user_attrs and t,
                            what="trial 0 paused, trial 1 running")[:2]
    lose_machine(a, tmp_path / "machine-a", [hung.user_attrs["worker_pid"]])

    code, out = finish(start(tmp_path, "--space", spec, "--trials-dir", "machine-b", "--heartbeat", "0.5"))
    assert code == 0, out
    final = trials(tmp_path, "asha")
    assert not [t for t in final if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # machine B promoted the trial machine A had paused, from the store
    assert "trial 0: promoted at rung 1; resumed" in out
    good = final[0]
    assert good.state == TrialState.COMPLETE and good.user_attrs["pauses"] == [1]
    assert sorted(good.intermediate_values) == [1, 2]
    assert final[1].user_attrs["reason"] == "orchestrator lost"
    shown = sweeper(tmp_path, "show", "--study", "asha", "--trial", "0", "--storage", f"sqlite:///{tmp_path}/studies.db")
    assert shown.returncode == 0, shown.stderr
    assert "Resumed after epoch 1 from artifact:" in shown.stdout
    assert not (tmp_path / "machine-a").exists()


@pytest.fixture(scope="module")
def swept_to_s3(colour_folder, tmp_path_factory):
    """A finished two-trial sweep whose files are in S3, and a machine that trained nothing."""
    import os

    monkeypatch = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("swept")
    url = stores.make("s3", root, monkeypatch)
    doc = tiny_space(colour_folder, study="shared", data=DATA, train={"epochs": 2, "batch_size": 8},
                     search={"n_trials": 2, "sampler": {"name": "random", "seed": 0}, "pruner": "none"})
    spec = str(write_space(root / "space.yaml", doc))
    code, out = finish(start(root, "--space", spec, "--trials-dir", "machine-a", "--artifacts", url))
    assert code == 0, out
    shutil.rmtree(root / "machine-a")
    elsewhere = root / "machine-c"
    elsewhere.mkdir()
    yield root, elsewhere, url, dict(os.environ)
    monkeypatch.undo()


@pytest.mark.slow
def test_a_machine_that_trained_nothing_exports_shows_ensembles_and_predicts(swept_to_s3, colour_folder):
    root, here, url, env = swept_to_s3
    storage = f"sqlite:///{root}/studies.db"
    best = sweeper(here, "best", "--study", "shared", "--storage", storage, "--export", "best/config.py", env=env)
    assert best.returncode == 0, best.stderr
    assert f"artifact store {url}" in best.stdout
    exported = (here / "best/config.py").read_text()
    assert "optimizer = {" in exported and "of sweeper study 'shared'" in exported
    shown = sweeper(here, "show", "--study", "shared", "--trial", "1", "--storage", storage, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "Epoch 2 done" in shown.stdout and '"model": "test_resnet"' in shown.stdout
    scored = sweeper(here, "ensemble", "--study", "shared", "--top", "2", "--storage", storage, "--json", env=env)
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout)
    # each member scores what its trial reported for its checkpoint's epoch
    final = {t.number: t for t in trials(root, "shared")}
    for member in result["members"]:
        assert member["accuracy"] == pytest.approx(final[member["trial"]].value, abs=1e-6)
    labelled = sweeper(here, "predict", "--study", "shared", "--top", "2", "--images", str(colour_folder),
                       "--storage", storage, "--out", "labels.csv", env=env)
    assert labelled.returncode == 0, labelled.stderr
    rows = list(csv.DictReader(open(here / "labels.csv")))
    assert len(rows) == 90 and {r["class"] for r in rows} <= {"class_0", "class_1", "class_2"}
    assert not (here / "trials" / "shared" / "0").exists()  # read from the store, not copied here
    # and it re-checks the best configuration with a new seed, its files going to the same store
    rechecked = sweeper(here, "recheck", "--study", "shared", "--top", "1", "--seeds", "1", "--storage", storage, env=env)
    assert rechecked.returncode == 0, rechecked.stderr
    (run,) = [t for t in trials(root, "shared") if "recheck_of" in t.user_attrs]
    assert run.state == TrialState.COMPLETE
    assert set(metas(run, storage).values()) <= stores.listing(url)
    assert {"config.json", "metrics.csv", "log.txt"} <= set(metas(run, storage))


@pytest.mark.slow
def test_the_store_keeps_the_best_checkpoints_only_and_optuna_dashboard_serves_the_files(
        colour_folder, tmp_path, monkeypatch):
    url = stores.make("folder", tmp_path, monkeypatch)
    doc = tiny_space(colour_folder, study="dash", data=DATA,
                     search={"n_trials": 3, "sampler": {"name": "random", "seed": 0}, "pruner": "none"})
    code, out = finish(start(tmp_path, "--space", str(write_space(tmp_path / "space.yaml", doc)),
                             "--artifacts", url, "--keep-checkpoints", "1"))
    assert code == 0, out
    storage = f"sqlite:///{tmp_path}/studies.db"
    final = trials(tmp_path, "dash")
    best = max(final, key=lambda t: (t.value, -t.number))
    held = stores.listing(url)
    kept = [t.number for t in final if metas(t, storage)["checkpoint.pth"] in held]
    assert kept == [best.number]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dashboard = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"), storage,
                                  "--artifact-dir", url, "--host", "127.0.0.1", "--port", str(port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(base + "/api/meta", timeout=2).status == 200, timeout=60,
                 what="optuna-dashboard")
        studies = json.load(urllib.request.urlopen(base + "/api/studies"))["study_summaries"]
        study_id = next(s["study_id"] for s in studies if s["study_name"] == "dash")
        shown = json.load(urllib.request.urlopen(f"{base}/api/studies/{study_id}"))["trials"]
        trial = next(t for t in shown if t["number"] == best.number)
        listed = {a["filename"]: a["artifact_id"] for a in trial["artifacts"]}
        assert {"config.json", "classes.txt", "metrics.csv", "log.txt", "checkpoint.pth"} <= set(listed)
        path = f"/artifacts/{study_id}/{trial['trial_id']}/{listed['metrics.csv']}"
        served = urllib.request.urlopen(base + path).read()
        assert served == (tmp_path / "trials" / "dash" / str(best.number) / "metrics.csv").read_bytes()
        assert [r["epoch"] for r in csv.DictReader(io.StringIO(served.decode()))] == ["1", "2"]
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=10)


@pytest.mark.slow
def test_a_worker_stopped_by_sigterm_stores_its_state_and_its_retry_resumes_from_it(
        colour_folder, tmp_path, monkeypatch):
    url = stores.make("s3", tmp_path, monkeypatch)
    doc = one_trial(colour_folder, "term", 6)
    spec = str(write_space(tmp_path / "space.yaml", doc))
    proc = start(tmp_path, "--space", spec, "--artifacts", url, env={"SWEEPER_INJECT_FAULT": "slow:0"})
    victim = wait_for(lambda: next((t for t in trials(tmp_path, "term") if len(t.intermediate_values) >= 2), None),
                      what="two epochs")
    import os

    os.kill(victim.user_attrs["worker_pid"], signal.SIGTERM)  # e.g. a job manager stopping it alone
    code, out = finish(proc)
    assert code == 0, out
    stopped, retry = trials(tmp_path, "term")
    assert stopped.user_attrs["reason"] == "worker killed by signal 15"  # as before: resumable
    assert retry.state == TrialState.COMPLETE
    # the state of the last epoch it finished reached the store before it died (or a later one:
    # the signal may fall after an epoch's save and before its report)
    assert retry.user_attrs["resumed_after_epoch"] >= len(stopped.intermediate_values) >= 2
    assert sorted(retry.intermediate_values) == list(range(1, 7))


@pytest.mark.slow
def test_a_store_lost_mid_trial_fails_the_trial_with_that_reason_and_queues_it_again(
        colour_folder, tmp_path, monkeypatch):
    url = stores.make("folder", tmp_path, monkeypatch)
    doc = one_trial(colour_folder, "outage", 5)
    spec = str(write_space(tmp_path / "space.yaml", doc))
    proc = start(tmp_path, "--space", spec, "--artifacts", url, "--max-retry", "1",
                 env={"SWEEPER_INJECT_FAULT": "slow:0", "SWEEPER_ARTIFACT_PATIENCE": "1"})
    wait_for(lambda: any(t.intermediate_values for t in trials(tmp_path, "outage")), what="a first epoch")
    Path(url).rename(tmp_path / "unmounted")  # the NFS mount goes away mid-trial
    code, out = finish(proc)
    assert code == 0, out
    first, *retries = trials(tmp_path, "outage")
    assert first.state == TrialState.FAIL
    assert first.user_attrs["reason"].startswith(f"artifact store unreachable: artifact store {url} unreachable")
    assert first.user_attrs["requeued"] is True  # resumable: queued again, as a lost machine's trial is
    assert [r.params for r in retries] == [first.params] and retries[0].user_attrs["retry_of"] == 0
    assert not [t for t in trials(tmp_path, "outage") if t.state == TrialState.RUNNING]
