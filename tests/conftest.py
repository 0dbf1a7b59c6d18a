from __future__ import annotations

import os

import pytest

# Some CI machines are VMs whose AMX tile state is not preserved: oneDNN's AMX bf16 kernels then
# return NaN at random (4 of 8 identical tiny trainings here, 0 of 20 without AMX). Cap oneDNN at
# AVX512-BF16 for the suite and every process it starts; bf16 autocast is still what trains.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")


def _own_cores_under_xdist() -> None:
    """Under `pytest -n N`, each test process's sweeps get cores / N (SWEEPER_CPU_CORES) and a
    CPU-worker registry of their own: their workers size their threads to that share instead of
    oversubscribing the other test process's, and thread counts (hence bit-exact twin runs) do not
    change with what the other one runs. Processes are not pinned: while one test waits (on a
    signal, a timeout, a heartbeat), the other's imports and orchestrators use the idle core."""
    name = os.environ.get("PYTEST_XDIST_WORKER")
    if not name:
        return
    import atexit
    import shutil
    import tempfile

    from sweeper.cpu_share import host_cores

    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ["SWEEPER_CPU_CORES"] = str(max(1, host_cores() // count))
    import torch

    torch.set_num_threads(host_cores())  # the tests that train in this process
    os.environ["SWEEPER_CPU_REGISTRY"] = registry = tempfile.mkdtemp(prefix=f"sweeper-cpu-workers-{name}-")
    atexit.register(shutil.rmtree, registry, ignore_errors=True)


_own_cores_under_xdist()

from sweeper.testing import make_image_folder


@pytest.fixture(autouse=True)
def cpu_unless_gpu_marked(request, monkeypatch):
    """Tests that expect CPU results (bit-exact twins, resume, re-scoring) stay on the CPU on a GPU
    machine too; tests marked `gpu` see the machine's GPUs and skip where there are none."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        monkeypatch.setenv("SWEEPER_DEVICE", "cpu")
        return
    from sweeper import gpus

    if not _machine_gpus(gpus):
        pytest.skip("no usable GPU on this machine")


def _machine_gpus(gpus, found=[]):  # noqa: B006 (asked once a session, in a subprocess)
    if not found:
        probe = gpus.probe()
        found.append([g for g in probe.gpus if not g.problem] if probe.available else [])
    return found[0]


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory):
    """Three easily told classes, 20 train / 10 val images each, mixed JPEG/PNG/gray/palette."""
    return make_image_folder(tmp_path_factory.mktemp("data") / "colours", classes=3, per_class=30)

