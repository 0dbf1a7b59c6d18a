"""Where and how a worker computes: the device its slot was given, the precision that device does
well, its share of a shared GPU's memory, and out-of-memory recognised wherever it happens.

The orchestrator tells a worker its device through SWEEPER_DEVICE (`cuda` or `cpu`, set in
worker_handle.worker_env): a GPU slot whose worker cannot use CUDA fails with the reason rather
than training on the CPU without a word. Without the variable (a worker started by hand), CUDA is
used when torch can.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

import torch

from sweeper.errors import WorkerError
from sweeper.gpus import GPU_ID_ENV
from sweeper.train.bf16_check import cpu_native_bf16

DEVICE_ENV = "SWEEPER_DEVICE"
SHARING_ENV = "SWEEPER_GPU_SHARING"  # trials this orchestrator runs on the worker's GPU at once
NATIVE_BF16 = (8, 0)
CONTEXT_HEADROOM = 0.95  # of a GPU shared by k trials, each caps its allocator at 0.95 / k
# what allocators say when memory runs out (CUDA's caching allocator raises OutOfMemoryError;
# the CUDA runtime, cuBLAS, cuDNN 9 (..._HOST/DEVICE_ALLOCATION_FAILED) and the CPU allocator
# raise RuntimeError with these words)
OOM_WORDS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "ALLOCATION_FAILED",
             "can't allocate memory", "CUDA_ERROR_OUT_OF_MEMORY", "cudaErrorMemoryAllocation")


def pick_device() -> torch.device:
    wanted = os.environ.get(DEVICE_ENV)
    if wanted == "cpu":
        return torch.device("cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available:
        return torch.device("cuda")
    if wanted == "cuda":
        said = [str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()]
        raise WorkerError(f"this slot was given GPU {os.environ.get('CUDA_VISIBLE_DEVICES')!r} but torch "
                          f"cannot use CUDA in the worker: {said[0] if said else 'torch.cuda.is_available() is False'}")
    return torch.device("cpu")


def gpu_identity() -> str | None:
    """This worker's GPU as the host registry names it (cpu_share.py): its UUID from the
    orchestrator, else (a worker started by hand) its CUDA_VISIBLE_DEVICES."""
    return os.environ.get(GPU_ID_ENV) or os.environ.get("CUDA_VISIBLE_DEVICES")



def choose_precision(setting: str, device_type: str, capability: tuple[int, int] | None = None,
                     native_cpu_bf16: bool = False) -> str:
    """`train.precision` on this device: bf16 where it is native (GPUs from sm_80, CPUs with
    AVX512-BF16/AMX), else fp16 with a gradient scaler on a GPU and fp32 on a CPU."""
    if device_type == "cuda":
        native = capability is not None and capability >= NATIVE_BF16
        if setting == "bf16" and not native:
            raise WorkerError(f"precision bf16 on a GPU with compute capability {capability[0]}.{capability[1]} "
                              "is emulated, far slower than fp16; use precision: fp16 or auto")
        if setting == "auto":
            return "bf16" if native else "fp16"
        return setting
    if setting == "auto":
        return "bf16" if native_cpu_bf16 else "fp32"
    return setting


def precision_here(setting: str, device: torch.device) -> str:
    if device.type == "cuda":
        return choose_precision(setting, "cuda", torch.cuda.get_device_capability(device))
    return choose_precision(setting, "cpu", native_cpu_bf16=cpu_native_bf16())


class Amp:
    """Autocast at the chosen precision, and for fp16 a gradient scaler (fp16's range is too
    narrow for small gradients); its state travels with a resume state."""

    DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

    def __init__(self, precision: str, device: torch.device):
        self.precision, self.device = precision, device
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        with torch.autocast(self.device.type, dtype=self.DTYPES[self.precision],
                            enabled=self.precision != "fp32"):
            yield

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if state:
            self.scaler.load_state_dict(state)


def memory_fraction(sharing: int) -> float:
    """The share of a GPU's memory each of `sharing` trials on it may allocate."""
    return 1.0 if sharing <= 1 else CONTEXT_HEADROOM / sharing


def apply_memory_share(device: torch.device, sharing: int | None = None) -> int:
    """Cap this process's allocator at its share of a GPU that other trials use too; returns
    how many share it."""
    sharing = sharing if sharing is not None else int(os.environ.get(SHARING_ENV, "1"))
    if device.type == "cuda" and sharing > 1:  # the call wants an index, not a bare "cuda"
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.set_per_process_memory_fraction(memory_fraction(sharing), index)
    return sharing


def in_process(gpu: str | None, neighbours: int = 0) -> torch.device:
    """The device for work in this process (`ensemble`, `predict`): the GPU named by its token
    (made this process's only visible one, before CUDA starts here), its allocator capped at a
    share beside the `neighbours` sweep workers training on it; without one, the CPU."""
    if gpu is None:
        return torch.device("cpu")
    if torch.cuda.is_initialized():
        raise RuntimeError("CUDA started before the GPU was chosen")
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    device = torch.device("cuda", 0)
    apply_memory_share(device, neighbours + 1)
    return device


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(w in str(exc) for w in OOM_WORDS)


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
