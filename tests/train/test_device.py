"""A worker's device, precision and memory, on real processes and real tensors."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sweeper.data import datasets, loading
from sweeper.errors import WorkerError
from sweeper.spec.sweep_spec import parse_spec
from sweeper.spec.trial_config import resolve
from sweeper.testing import tiny_space
from sweeper.train import device as devices
from sweeper.train import resume
from sweeper.train.worker import run_trial


def _config(folder, tmp_path, number=0, **train):
    spec = parse_spec(tiny_space(folder, train={"epochs": 3, "batch_size": 8, **train}))
    cache = datasets.prepare(datasets.Source(str(folder), None, 0.2), 16, tmp_path / "cache")
    return resolve(spec, number, {"lr": 0.05}, tmp_path / "trials", cache)


def test_real_allocation_failures_are_out_of_memory():
    with pytest.raises(RuntimeError) as caught:  # the CPU allocator's own failure
        torch.empty(2**60, dtype=torch.uint8)
    assert devices.is_out_of_memory(caught.value)
    assert devices.first_line(caught.value).startswith("[enforce fail at alloc_cpu.cpp")
    assert devices.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    # cuBLAS and cuDNN 9 report allocation failures as RuntimeError text (ATen/cuda/Exceptions.h)
    assert devices.is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert devices.is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED"))
    assert not devices.is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


# torch.cuda.is_bf16_supported(including_emulation=False) is "capability major >= 8"
@pytest.mark.parametrize("setting, capability, chosen", [
    ("auto", (7, 5), "fp16"), ("auto", (7, 0), "fp16"), ("auto", (8, 0), "bf16"), ("auto", (9, 0), "bf16"),
    ("fp16", (9, 0), "fp16"), ("fp32", (7, 5), "fp32"), ("bf16", (8, 6), "bf16")])
def test_precision_on_a_gpu_follows_native_bf16(setting, capability, chosen):
    assert devices.choose_precision(setting, "cuda", capability) == chosen


def test_precision_refusals_and_the_cpu_rule():
    with pytest.raises(WorkerError, match="bf16 on a GPU with compute capability 7.5 is emulated"):
        devices.choose_precision("bf16", "cuda", (7, 5))
    assert devices.choose_precision("auto", "cpu", native_cpu_bf16=True) == "bf16"
    assert devices.choose_precision("auto", "cpu", native_cpu_bf16=False) == "fp32"


def test_fp16_trains_with_a_loss_scaler_and_resumes_exactly(colour_folder, tmp_path):
    """fp16 runs on a CPU too (slowly): the GradScaler path and its state in resume.pt are real."""
    whole = _config(colour_folder, tmp_path / "whole", precision="fp16")
    events = []
    assert run_trial(whole, lambda e: events.append(e) or True) == "complete"
    assert events[0]["precision"] == "fp16"
    assert "(fp16)" in (Path(whole.trial_dir) / "log.txt").read_text()
    saved = dataclasses.replace(whole, resume_from=str(Path(whole.trial_dir) / "resume.pt"), resume_trial=whole.number)
    assert resume.load(saved)["scaler"]["scale"] > 1
    # the same trial stopped after epoch 2, then resumed from its state
    part = _config(colour_folder, tmp_path / "part", precision="fp16")
    assert run_trial(part, lambda e: e["event"] != "epoch" or e["epoch"] < 2) == "stopped"
    resumed = dataclasses.replace(part, resume_from=str(Path(part.trial_dir) / "resume.pt"), resume_trial=part.number)
    assert run_trial(resumed, lambda e: True) == "complete"
    rows = lambda c: [{k: r[k] for k in ("train_loss", "val_acc", "lr")}  # noqa: E731
                      for r in csv.DictReader(open(Path(c.trial_dir) / "metrics.csv"))]
    assert rows(resumed) == rows(whole)


def test_out_of_memory_in_validation_is_named_with_the_original_message(colour_folder, tmp_path, monkeypatch):
    config = _config(colour_folder, tmp_path, number=5)
    monkeypatch.setenv("SWEEPER_INJECT_FAULT", "oom_val:5")
    with pytest.raises(WorkerError) as caught:
        run_trial(config, lambda e: True)
    assert str(caught.value) == ("out of memory in validation at batch_size=8: CUDA out of memory. "
                                 "Tried to allocate 2.00 GiB (injected)")


def test_out_of_memory_while_creating_the_model_is_not_called_loading_data(colour_folder, tmp_path, monkeypatch):
    config = _config(colour_folder, tmp_path, number=2)
    monkeypatch.setenv("SWEEPER_INJECT_FAULT", "oom_model:2")
    with pytest.raises(WorkerError, match="^out of memory in creating the model at batch_size=8: CUDA out of memory"):
        run_trial(config, lambda e: True)
    assert not (Path(config.trial_dir) / "metrics.csv").exists()


def test_a_gpu_slot_whose_worker_cannot_use_cuda_fails_instead_of_training_on_the_cpu(colour_folder, tmp_path):
    config = _config(colour_folder, tmp_path)
    config.save()
    env = {**os.environ, "SWEEPER_DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": ""}  # a GPU the worker cannot see
    done = subprocess.run([sys.executable, "-m", "sweeper.train.worker", str(Path(config.trial_dir) / "config.json")],
                          env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 1
    assert events[-1]["event"] == "fail"
    assert events[-1]["reason"].startswith("this slot was given GPU '' but torch cannot use CUDA in the worker")
    assert not (Path(config.trial_dir) / "metrics.csv").exists()  # it never trained


def test_loader_processes_fit_in_dev_shm():
    # Docker's default /dev/shm is 64 MiB; each loader process holds prefetch_factor (2) batches
    # of uint8 images there: resnet50 at 224 px, batch 64 -> 9.2 MiB a batch
    batch = 64 * 3 * 224 * 224
    assert loading.shm_cap(8, 64 * 2**20, batch) == 1
    assert loading.shm_cap(8, 8 * 2**30, batch) == 8
    assert loading.shm_cap(8, 16 * 2**20, batch) == 0  # augmentation then runs in the worker
    assert loading.shm_cap(8, 64 * 2**20, batch, host_workers=4) == 0  # four trials share it
    # shares come from the slots the orchestrator runs, not who registered first
    assert loading.loader_workers("auto", torch.device("cuda"), 16, 4) == 4
    assert loading.loader_workers("auto", torch.device("cpu"), 16, 1) == 0


def test_a_small_dev_shm_gives_fewer_loaders_and_says_so(colour_folder, tmp_path, monkeypatch):
    from sweeper.cpu_share import CpuShare

    config = dataclasses.replace(_config(colour_folder, tmp_path), num_workers=4)
    monkeypatch.setattr(loading, "shm_free", lambda: 5 * 2**16)  # 320 KiB: room for one loader's batches
    with CpuShare(tmp_path / "registry") as share:
        loaders = loading.make_loaders(config, torch.device("cpu"), share)
    assert loaders.num_workers == 1
    assert loaders.note.startswith("/dev/shm has 0 MiB free: 1 loader process(es) instead of 4")
    assert next(iter(loaders.train))[0].dtype == torch.uint8
