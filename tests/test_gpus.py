"""GPU selection and its refusals, checked on any machine: the probe's answer is what CUDA would
say (a JSON record, as `python -m sweeper.gpus` prints it), the rules come from NVIDIA and torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from sweeper import gpus
from sweeper.errors import SpecError
from sweeper.sweep.worker_handle import Slot, worker_env

TORCH_2_14_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


def _probe(devices, env=None, available=True, driver="580.82.07", problem=None):
    found = {"torch": "2.14.1+cu130", "cuda": "13.0", "arch_list": TORCH_2_14_ARCHS, "driver": driver,
             "available": available, "problem": problem,
             "gpus": [{"name": name, "capability": list(cap), "memory": 16 << 30, "uuid": f"uuid-{i}",
                       "problem": None} for i, (name, cap) in enumerate(devices)]}
    return gpus.from_json(found, env or {})


# NVIDIA's CUDA C Programming Guide, "Binary Compatibility": a cubin for X.y runs on X.z, z >= y,
# never across majors; PTX for compute_XY is JIT-compiled for any later capability
@pytest.mark.parametrize("capability, archs, runs", [
    ((7, 0), TORCH_2_14_ARCHS, False),  # V100: the cu130 wheel starts at sm_75
    ((6, 0), TORCH_2_14_ARCHS, False),  # P100
    ((7, 5), TORCH_2_14_ARCHS, True),  # T4
    ((8, 9), TORCH_2_14_ARCHS, True),  # L4 / RTX 4090: sm_86 cubins run on 8.9
    ((12, 1), TORCH_2_14_ARCHS, True),
    ((7, 0), ["sm_50", "sm_60", "sm_70", "compute_70"], True),
    ((9, 0), ["sm_80", "compute_80"], True),  # PTX compiled on load
    ((8, 0), ["sm_86"], False),  # a cubin for a later minor does not run on an earlier one
    ((9, 0), ["sm_90a"], True),
    ((10, 0), ["sm_90a"], False),  # arch-specific targets run on that capability only
])
def test_compatibility_rule(capability, archs, runs):
    assert gpus.runs_on(capability, archs) is runs


def test_slots_map_through_the_users_visible_devices():
    found = _probe([("A100", (8, 0))] * 4, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"})
    chosen = gpus.select(["0", "1"], found)
    assert [g.token for g in chosen] == ["4", "5"]
    slots = [Slot(0, "4"), Slot(1, "4"), Slot(2, "5")]
    env = worker_env(slots[0], slots)
    assert env["CUDA_VISIBLE_DEVICES"] == "4" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["SWEEPER_DEVICE"] == "cuda" and env["SWEEPER_GPU_SHARING"] == "2"
    assert worker_env(slots[2], slots)["SWEEPER_GPU_SHARING"] == "1"
    assert worker_env(slots[0], slots, alone=True)["SWEEPER_GPU_SHARING"] == "1"
    uuids = _probe([("A100", (8, 0))] * 2, {"CUDA_VISIBLE_DEVICES": "GPU-8932f937,MIG-1f2e3d4c"})
    assert [g.token for g in gpus.select(None, uuids)] == ["GPU-8932f937", "MIG-1f2e3d4c"]


def test_every_refusal_names_what_the_machine_has_and_what_to_do():
    def refused(requested, found):
        with pytest.raises(SpecError) as caught:
            gpus.select(requested, found)
        return str(caught.value)

    two = _probe([("Tesla T4", (7, 5)), ("Tesla T4", (7, 5))], {"CUDA_VISIBLE_DEVICES": "2,3"})
    said = refused(["2"], two)
    assert "no visible GPU 2" in said and "2 visible (0: Tesla T4 sm_75; 1: Tesla T4 sm_75)" in said
    said = refused(["0"], _probe([("Tesla V100-SXM2-16GB", (7, 0))]))
    assert "sm_70" in said and "sm_75, sm_80" in said and "download.pytorch.org/whl/cu126" in said
    old = _probe([], available=False, driver="535.104.05",
                 problem="CUDA initialization: The NVIDIA driver on your system is too old (found version 12020).")
    said = refused(None, old)  # GPUs are there, torch cannot use them: no silent CPU fallback
    assert "driver is 535.104.05" in said and "needs 580.65.06 or newer" in said and "--gpus none" in said
    hidden = _probe([], available=False, driver=None, problem="CUDA initialization: no CUDA-capable device")
    assert "cannot use CUDA here: CUDA initialization" in refused(["0"], hidden)
    broken = gpus.from_json({**json.loads(json.dumps({"torch": "2.14.1", "cuda": "13.0", "arch_list": TORCH_2_14_ARCHS,
                                                      "driver": "580.82.07", "available": True, "problem": None})),
                             "gpus": [{"name": "X", "capability": [9, 0], "memory": 1, "uuid": "u",
                                       "problem": "no kernel image is available for execution on the device"}]}, {})
    assert "no kernel image" in refused(["0"], broken)
    assert gpus.select([], two) == []  # --gpus none


def test_a_cpu_machine_trains_on_the_cpu_and_refuses_a_gpu():
    found = gpus.probe({**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert found.arch_list == torch.cuda.get_arch_list() and not found.available
    assert gpus.select(None, found) == []
    with pytest.raises(SpecError, match="--gpus: .* cannot use CUDA here: no NVIDIA GPU is visible"):
        gpus.select(["0"], found)


def test_the_probe_subprocess_answers_in_json():
    done = subprocess.run([sys.executable, "-m", "sweeper.gpus"], capture_output=True, text=True, check=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(gpus.MARKER)]
    found = json.loads(line[len(gpus.MARKER):])
    assert found["cuda"] == torch.version.cuda and found["arch_list"] == torch.cuda.get_arch_list()
    assert found["available"] is False and found["gpus"] == []


def test_bf16_on_a_gpu_without_native_bf16_is_refused_before_the_sweep():
    t4 = gpus.select(["0"], _probe([("Tesla T4", (7, 5))]))
    with pytest.raises(SpecError, match="train.precision: bf16 on GPU 0 .Tesla T4, sm_75. is emulated"):
        gpus.check_precision(["auto", "bf16"], t4)
    gpus.check_precision(["auto", "fp16"], t4)
    gpus.check_precision(["bf16"], gpus.select(["0"], _probe([("A100", (8, 0))])))


@pytest.mark.parametrize("text, parsed", [(None, None), ("none", []), ("0,1", ["0", "1"]),
                                          ("GPU-8932f937,MIG-GPU-8932f937/1/0", ["GPU-8932f937", "MIG-GPU-8932f937/1/0"])])
def test_gpus_option(text, parsed):
    assert gpus.parse(text) == parsed


@pytest.mark.parametrize("text", ["first", "0,GPU-abc", ""])
def test_gpus_option_refused(text):
    with pytest.raises(SpecError, match="--gpus: must be GPU numbers"):
        gpus.parse(text)
