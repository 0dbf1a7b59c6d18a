"""What only a GPU can show; these run where CUDA works (`pytest tests/gpu`) and skip elsewhere.
Every sweeper command runs as its own process, so CUDA never starts in the test process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from sweeper import gpus
from sweeper.testing import tiny_space, write_space

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def _sweeper(cwd, *args, env=None):
    return subprocess.run([sys.executable, "-m", "sweeper", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


def _trials(cwd, study):
    found = optuna.load_study(study_name=study, storage=f"sqlite:///{cwd}/studies.db").get_trials()
    return sorted(found, key=lambda t: t.number)


def test_two_trials_share_one_gpu_each_on_cuda_at_its_precision(colour_folder, tmp_path):
    first = gpus.choose("0")[0]
    # tiny_space pins fp32 for the CPU suite; auto is what a GPU sweep runs
    space = write_space(tmp_path / "space.yaml", tiny_space(colour_folder, study="gpu",
                                                            train={"epochs": 2, "precision": "auto"}))
    done = _sweeper(tmp_path, "run", "--space", space, "--workers", "2", "--gpus", "0", "--n-trials", "2")
    assert done.returncode == 0, done.stderr
    found = _trials(tmp_path, "gpu")
    assert [t.state for t in found] == [TrialState.COMPLETE] * 2
    expected = "bf16" if first.capability >= (8, 0) else "fp16"
    assert {(t.user_attrs["device"], t.user_attrs["precision"], t.user_attrs["gpu_sharing"],
             t.user_attrs["cuda_visible_devices"]) for t in found} == {("cuda", expected, 2, first.token)}
    ensembled = _sweeper(tmp_path, "ensemble", "--study", "gpu", "--top", "2", "--gpus", "0", "--json")
    assert ensembled.returncode == 0, ensembled.stderr
    assert json.loads(ensembled.stdout)["ensemble"]["accuracy"] > 0.5


def test_a_gpu_named_by_its_uuid(colour_folder, tmp_path):
    uuid = "GPU-" + gpus.choose("0")[0].uuid
    space = write_space(tmp_path / "space.yaml", tiny_space(colour_folder, study="uuid", train={"epochs": 1}))
    done = _sweeper(tmp_path, "run", "--space", space, "--gpus", uuid, "--n-trials", "1")
    assert done.returncode == 0, done.stderr
    (trial,) = _trials(tmp_path, "uuid")
    assert trial.user_attrs["device"] == "cuda" and trial.user_attrs["cuda_visible_devices"] == uuid


def test_a_real_cuda_out_of_memory_is_recognised():
    code = ("import torch; from sweeper.train import device as d\n"
            "try:\n    torch.empty(1 << 50, dtype=torch.uint8, device='cuda')\n"
            "except Exception as e:\n    print(d.is_out_of_memory(e), type(e).__name__, d.first_line(e)[:40])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("True OutOfMemoryError CUDA out of memory"), done.stdout + done.stderr


def test_a_shared_gpu_caps_each_trials_memory():
    code = ("import torch; from sweeper.train import device as d\n"
            "dev = d.pick_device(); d.apply_memory_share(dev, 4)\n"
            "total = torch.cuda.get_device_properties(0).total_memory\n"
            "try:\n    torch.empty(int(total * 0.3), dtype=torch.uint8, device=dev); print('allocated')\n"
            "except torch.OutOfMemoryError:\n    print('capped')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "capped", done.stdout + done.stderr  # 0.3 > 0.95 / 4
