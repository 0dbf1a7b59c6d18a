"""GPU selection and its refusals, checked on any machine: the probe's answer is what CUDA would
say (a JSON record, as `python -m sweeper.gpus` prints it), the rules come from NVIDIA and torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sweeper import gpus
from sweeper.cpu_share import CpuShare
from sweeper.errors import SpecError
from sweeper.sweep.worker_handle import Slot, worker_env

TORCH_2_14_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


def _probe(devices, env=None, available=True, driver="580.82.07", problem=None, exclusive=None, uuids=None):
    found = {"torch": "2.14.1+cu130", "cuda": "13.0", "arch_list": TORCH_2_14_ARCHS, "driver": driver,
             "available": available, "problem": problem,
             "gpus": [{"name": name, "capability": list(cap), "memory": 16 << 30,
                       "uuid": uuids[i] if uuids else f"uuid-{i}", "problem": None, "exclusive": exclusive}
                      for i, (name, cap) in enumerate(devices)]}
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
    assert (found.torch, found.cuda) == (torch.__version__, torch.version.cuda) and not found.available
    assert gpus.select(None, found) == []
    with pytest.raises(SpecError, match="--gpus: .* cannot use CUDA here: CUDA sees no GPU"):
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


def test_a_machine_without_dev_nvidia_is_asked_of_torch(tmp_path):
    # WSL2 has /dev/dxg and its libcuda in /usr/lib/wsl/lib, no /dev/nvidia*: the driver's library
    # is what decides whether torch is asked, and torch's answer (here: no device) decides the rest
    (tmp_path / "libcuda.so.1").write_bytes(b"")
    env = {**os.environ, "LD_LIBRARY_PATH": str(tmp_path)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    assert not gpus.nothing_visible(env)
    assert gpus.nothing_visible({**env, "CUDA_VISIBLE_DEVICES": ""})
    found = gpus.probe(env)
    assert not found.available and found.problem == gpus.NO_GPU
    assert gpus.select(None, found) == []  # the default trains on the CPU
    # torch says nothing when CUDA finds no device; it warns when CUDA fails
    assert gpus.unavailable_reason([], cpu_build=False) == gpus.NO_GPU
    too_old = "CUDA initialization: The NVIDIA driver on your system is too old (found version 12020)."
    assert gpus.unavailable_reason([too_old], cpu_build=False) == too_old
    # a CPU-only torch beside a driver is a wrong install: the default does not quietly train on the CPU
    wrong = _probe([], available=False, problem=gpus.unavailable_reason([], cpu_build=True))
    with pytest.raises(SpecError, match="cannot use CUDA here: this is a CPU-only build of torch"):
        gpus.select(None, wrong)


def test_the_probe_starts_cuda_on_the_gpus_the_command_uses_only(monkeypatch):
    # no GPU here: torch.cuda is replaced by an 8-GPU machine that records where kernels run
    ran = []

    class Properties:
        name, major, minor, total_memory = "NVIDIA H100 80GB HBM3", 9, 0, 80 << 30

        def __init__(self, i):
            self.uuid = f"0000000{i}-aaaa-bbbb-cccc-dddddddddddd"

    class Tensor:
        def add_(self, _):
            return self

        def item(self):
            return 2.0

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "get_device_properties", Properties)
    monkeypatch.setattr(torch, "ones", lambda *_, device: ran.append(device) or Tensor())
    monkeypatch.setattr(gpus, "compute_modes", lambda: {"00000002-aaaa-bbbb-cccc-dddddddddddd": gpus.EXCLUSIVE_PROCESS,
                                                        "00000003-aaaa-bbbb-cccc-dddddddddddd": 0})
    answer = gpus._probe_here([2])
    assert ran == ["cuda:2"] and len(answer["gpus"]) == 8
    assert [g["exclusive"] for g in answer["gpus"][:4]] == [None, None, True, False]
    ran.clear()
    gpus._probe_here()  # `python -m sweeper.gpus` by hand: every GPU
    assert ran == [f"cuda:{i}" for i in range(8)]
    # the probe passes what the command asked for: `--gpus 0` checks GPU 0, the default all
    assert gpus.checked_positions(["0"]) == [0] and gpus.checked_positions(["3", "1", "3"]) == [1, 3]
    assert gpus.checked_positions(None) is None
    assert gpus.checked_positions(None, first_only=True) == [0]  # ensemble, predict: they score on one


def test_an_exclusive_process_gpu_takes_one_trial_at_a_time():
    found = _probe([("A100", (8, 0)), ("A100", (8, 0))], exclusive=True)
    a, b = gpus.select(None, found)
    gpus.check_exclusive([a, b])
    with pytest.raises(SpecError, match=r"^--workers: GPU 0 \(A100, sm_80\) is in EXCLUSIVE_PROCESS compute mode: "
                                        r"one process at a time, not 2 trials; use --workers 2"):
        gpus.check_exclusive([a, b, a, b])
    shared = gpus.select(None, _probe([("A100", (8, 0))], exclusive=False))
    gpus.check_exclusive(shared * 4)  # default compute mode, or unknown (None): sharing is fine
    gpus.check_exclusive(gpus.select(None, _probe([("A100", (8, 0))])) * 4)


def test_a_mistyped_uuid_is_named_beside_what_the_machine_has():
    alone = _probe([], {"CUDA_VISIBLE_DEVICES": "GPU-8932f93x"}, available=False, problem=gpus.NO_GPU)
    machine = _probe([("NVIDIA H100 80GB HBM3", (9, 0))], uuids=["8932f937-aaaa"])
    with pytest.raises(SpecError) as caught:
        gpus.select_ids(["GPU-8932f93x"], [alone], lambda: machine)
    assert str(caught.value) == ("--gpus: CUDA finds no GPU GPU-8932f93x on this machine (it sees 0: NVIDIA H100 "
                                 "80GB HBM3 GPU-8932f937-aaaa); UUIDs and MIG ids as `nvidia-smi -L` lists them")
    right = _probe([("NVIDIA H100 80GB HBM3", (9, 0))], {"CUDA_VISIBLE_DEVICES": "GPU-8932f937"}, uuids=["8932f937-aaaa"])
    (gpu,) = gpus.select_ids(["GPU-8932f937"], [right], lambda: pytest.fail("asked the machine"))
    assert gpu.token == "GPU-8932f937"
    # a machine whose driver is too old says so, not "no GPU GPU-..."
    old = _probe([], available=False, driver="535.104.05", problem="CUDA initialization: The NVIDIA driver on your "
                                                                   "system is too old (found version 12020).")
    with pytest.raises(SpecError, match="driver is 535.104.05"):
        gpus.select_ids(["GPU-8932f937"], [old], lambda: old)


def test_one_gpu_named_two_ways_is_one_gpu_in_the_host_registry(tmp_path):
    # a sweep on `--gpus 0` and an `ensemble --gpus GPU-<uuid>` beside it share one GPU
    by_number = gpus.select(["0"], _probe([("A100", (8, 0))], uuids=["8932f937-aaaa"]))[0]
    by_uuid = gpus.select(["0"], _probe([("A100", (8, 0))], {"CUDA_VISIBLE_DEVICES": "GPU-8932f937"},
                                        uuids=["8932f937-aaaa"]))[0]
    assert (by_number.token, by_uuid.token) == ("0", "GPU-8932f937")
    slot = Slot(0, by_number.token, by_number.label, by_number.identity)
    worker = worker_env(slot, [slot])
    assert worker["CUDA_VISIBLE_DEVICES"] == "0" and worker["SWEEPER_GPU_ID"] == by_uuid.identity
    # the worker registers as train/worker.py does, in a process of its own
    code = ("import sys; from pathlib import Path; from sweeper.cpu_share import CpuShare; from sweeper.train import device\n"
            f"CpuShare(Path({str(tmp_path)!r}), gpu=device.gpu_identity()); print('registered', flush=True); sys.stdin.read()")
    registered = subprocess.Popen([sys.executable, "-c", code], env=worker, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
    try:
        assert registered.stdout.readline().strip() == "registered"
        with CpuShare(tmp_path, gpu=by_uuid.identity) as scoring:
            assert scoring.on_gpu(by_uuid.identity) == 2
    finally:
        registered.communicate(timeout=60)


def test_the_older_builds_hint_pins_the_pair_pyproject_and_the_readme_give():
    root = Path(__file__).resolve().parent.parent
    pins = f"torch=={gpus.TORCH_PIN} torchvision=={gpus.TORCHVISION_PIN}"
    assert pins in gpus.OLDER_BUILDS and pins in (root / "README.md").read_text()
    pyproject = (root / "pyproject.toml").read_text()
    assert f'"torch=={gpus.TORCH_PIN}"' in pyproject and f'"torchvision=={gpus.TORCHVISION_PIN}"' in pyproject
