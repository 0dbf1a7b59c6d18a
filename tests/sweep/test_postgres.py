"""The multi-machine path: several orchestrators on one study in a real PostgreSQL server, each
with a trials dir of its own (standing in for machines) and one S3 artifact store.

`.ci/run` starts the server and sets SWEEPER_TEST_POSTGRES_URL; without it these tests skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from urllib.parse import unquote

import optuna
import pytest
import stores
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from sweeper.testing import tiny_space, write_space

URL = os.environ.get("SWEEPER_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(not URL, reason="SWEEPER_TEST_POSTGRES_URL not set (.ci/run sets it)")


def _secrets(url: str) -> list[str]:
    password = make_url(url).password
    return [password, url.split("@")[0].split(":")[-1], unquote(password)]


def test_two_orchestrators_two_workers_each_on_one_postgres_study(colour_folder, tmp_path, monkeypatch):
    artifacts = stores.make("s3", tmp_path, monkeypatch)
    study = f"pg-{uuid.uuid4().hex[:8]}"
    spec = write_space(tmp_path / "space.yaml", tiny_space(
        colour_folder, study=study, search={"n_trials": 6, "sampler": "random", "pruner": "none"}))
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "sweeper", "run", "--space", str(spec),
                               "--storage", URL, "--workers", "2", "--trials-dir", f"machine-{m}",
                               "--artifacts", artifacts], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
             for m in "ab"]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    print(f"two orchestrators on PostgreSQL: {time.monotonic() - started:.1f} s")
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
        assert not any(secret in out for secret in _secrets(URL))
        assert "storage=postgresql://***@127.0.0.1" in out
    trials = optuna.load_study(study_name=study, storage=URL).get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 6
    # a third machine, which trained nothing, exports the best trial from the artifact store
    for machine in ("machine-a", "machine-b"):
        shutil.rmtree(tmp_path / machine)
    (tmp_path / "machine-c").mkdir()
    best = subprocess.run([sys.executable, "-m", "sweeper", "best", "--study", study, "--storage", URL,
                           "--export", "best.py"], cwd=tmp_path / "machine-c", capture_output=True, text=True)
    assert best.returncode == 0, best.stderr
    assert "optimizer = {" in (tmp_path / "machine-c" / "best.py").read_text()
    assert not any(secret in best.stdout + best.stderr for secret in _secrets(URL))
    stores.stop_server()
