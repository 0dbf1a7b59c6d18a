"""The artifact store as a user meets it: a bad --artifacts is refused before any work (one
`Error:` line, exit 2, no secret shown, the study store untouched), and a store that goes away
mid-trial fails the trial with a reason its retry resumes from."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import stores

from sweeper.data import datasets
from sweeper.spec.sweep_spec import parse_spec
from sweeper.spec.trial_config import resolve
from sweeper.testing import tiny_space, write_space
from sweeper.train import resume
from sweeper.train.worker import run_trial


@pytest.fixture(scope="module", autouse=True)
def _stop_s3_server():
    yield
    stores.stop_server()


def run(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeper", "run", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.parametrize("artifacts, expected", [
    ("missing-folder", "--artifacts: folder "),
    ("ftp://host/path", "use a folder path or s3://bucket/prefix"),
    ("s3:///no-bucket", "no bucket; use s3://bucket/prefix"),
])
def test_a_bad_artifact_store_is_refused_before_any_work(colour_folder, tmp_path, artifacts, expected):
    spec = write_space(tmp_path / "space.yaml", tiny_space(colour_folder))
    done = run(tmp_path, "--space", str(spec), "--artifacts", artifacts)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and expected in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "studies.db").exists() and not (tmp_path / "trials").exists()


def test_an_unreachable_s3_store_is_refused_without_showing_credentials(colour_folder, tmp_path):
    spec = write_space(tmp_path / "space.yaml", tiny_space(colour_folder))
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
           "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
           "SWEEPER_ARTIFACT_PATIENCE": "1"}
    done = run(tmp_path, "--space", str(spec), "--artifacts", "s3://bucket/prefix", env=env)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "unreachable" in errors[0] and "AWS_ENDPOINT_URL" in errors[0], done.stderr
    assert secret not in done.stderr + done.stdout and "Traceback" not in done.stderr
    assert not (tmp_path / "studies.db").exists()


def test_a_missing_bucket_is_refused_at_once(colour_folder, tmp_path, monkeypatch):
    stores.make("s3", tmp_path, monkeypatch)  # the server and credentials; not this bucket
    spec = write_space(tmp_path / "space.yaml", tiny_space(colour_folder))
    done = run(tmp_path, "--space", str(spec), "--artifacts", "s3://no-such-bucket-here/x")
    assert done.returncode == 2, done.stderr
    assert "NoSuchBucket" in done.stderr or "does not exist" in done.stderr, done.stderr
    assert not (tmp_path / "studies.db").exists()


def test_a_store_gone_mid_trial_fails_it_with_a_resumable_reason(colour_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEPER_ARTIFACT_PATIENCE", "0.5")
    folder = tmp_path / "store"
    folder.mkdir()
    spec = parse_spec(tiny_space(colour_folder, train={"epochs": 3, "batch_size": 8}))
    cache = datasets.prepare(datasets.Source(str(colour_folder), None, 0.2), 16, tmp_path / "cache")
    config = dataclasses.replace(resolve(spec, 0, {"lr": 0.05}, tmp_path / "trials", cache),
                                 artifacts=str(folder), artifact_key="ab12")

    def report(event):
        if event["event"] == "epoch" and event["epoch"] == 1:
            while folder.exists():  # the NFS mount goes away after the first epoch (an upload
                shutil.rmtree(folder, ignore_errors=True)  # still writing into it may race one pass)
        return True

    with pytest.raises(Exception) as failed:
        run_trial(config, report)
    reason = str(failed.value)
    assert reason.startswith("artifact store unreachable") and str(folder) in reason
    assert resume.resumable(reason)  # its retry carries on from the store once it is back


def test_an_artifact_id_read_from_a_study_cannot_name_a_file_outside_the_folder_store(tmp_path):
    from sweeper import artifacts
    from sweeper.errors import StorageError

    folder = tmp_path / "store"
    folder.mkdir()
    # an absolute id's temporary name once landed in <store>/../<id>: make that folder exist
    (tmp_path / str(tmp_path).lstrip("/")).mkdir(parents=True)
    store = artifacts.open_store(str(folder), patience=0.5)
    for bad in ["../escaped", f"/..{tmp_path}/escaped", "ABC-12", "", "0a/../../escaped"]:
        for action in (lambda: store.put_bytes(bad, b"planted"), lambda: store.get(bad),
                       lambda: store.exists(bad), lambda: store.remove(bad)):
            with pytest.raises(StorageError, match="not one sweeper made"):
                action()
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and folder not in p.parents]
    assert not outside and not list(folder.iterdir())
    store.put_bytes(artifacts.artifact_id(artifacts.new_key(), "log.txt"), b"ok")  # sweeper's own ids work
    assert len(list(folder.iterdir())) == 1
