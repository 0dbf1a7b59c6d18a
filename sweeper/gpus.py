"""Which GPUs a command may use, checked before any work starts.

GPUs are named within what the user made visible: under `CUDA_VISIBLE_DEVICES=4,5,6,7`,
`--gpus 0,1` means physical GPUs 4 and 5, and each worker gets the user's own token ("4",
"GPU-<uuid>" or "MIG-<uuid>") as its CUDA_VISIBLE_DEVICES, with CUDA_DEVICE_ORDER=PCI_BUS_ID so
that numbers are nvidia-smi's. `--gpus` also takes UUIDs and MIG ids; `--gpus none` trains on the
CPU on purpose.

The machine is asked once, in a subprocess (`python -m sweeper.gpus`): the orchestrator must not
initialise CUDA before its fork server forks. The probe asks torch which GPUs CUDA sees (not the
file system: WSL2 has /dev/dxg, not /dev/nvidia*) and runs one tiny kernel on each device the
command will use, and only on those (a context costs seconds and about half a GB per GPU, beside
trials that may be near their memory cap), which is the only test that catches every way a wheel
and a machine disagree (an old driver, a GPU below the wheel's architectures, a device a
container hides). It also reads each GPU's compute mode from the driver (NVML): a GPU in
EXCLUSIVE_PROCESS mode takes one trial at a time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sweeper.errors import SpecError, quoted

GPU_ID_ENV = "SWEEPER_GPU_ID"  # a worker's GPU by UUID, one name however the user spelt it

NONE = "none"
MARKER = "SWEEPER_GPUS "  # the probe's answer line (anything else on stdout is not ours)
PROBE_TIMEOUT = 120.0
NO_GPU = "CUDA sees no GPU (no NVIDIA driver, no GPU, or CUDA_VISIBLE_DEVICES names none)"
# the oldest Linux driver each CUDA major release runs on (NVIDIA's CUDA compatibility guide,
# minor-version compatibility): a wheel built for CUDA 13.x needs 580 or newer
MIN_DRIVER = {12: "525.60.13", 13: "580.65.06"}
NATIVE_BF16 = (8, 0)  # Ampere and newer; below it torch emulates bf16, far slower than fp16
# the torch/torchvision pair pyproject.toml pins (a test keeps the three in step)
TORCH_PIN, TORCHVISION_PIN = "2.14.1", "0.29.1"
OLDER_BUILDS = (f"pip install torch=={TORCH_PIN} torchvision=={TORCHVISION_PIN} --index-url "
                "https://download.pytorch.org/whl/cu126 (CUDA 12.6 builds: drivers from 525, GPUs from "
                "sm_50; if that index lacks the pair, its newest torch/torchvision pair); README: 'GPUs'")
EXCLUSIVE_PROCESS = 3  # NVML's nvmlComputeMode_t: 0 default, 1 exclusive thread (gone), 2 prohibited


@dataclass(frozen=True)
class Gpu:
    """One visible GPU as the probe found it."""

    position: int  # its number among the visible devices (what `--gpus 0` means)
    token: str  # what its worker's CUDA_VISIBLE_DEVICES holds
    name: str
    capability: tuple[int, int]
    memory: int  # bytes
    uuid: str
    problem: str | None = None  # the tiny kernel failed: why
    exclusive: bool | None = None  # in EXCLUSIVE_PROCESS compute mode (None: the driver did not say)

    @property
    def label(self) -> str:
        return f"GPU {self.token} ({self.name}, sm_{self.capability[0]}{self.capability[1]})"

    @property
    def identity(self) -> str:
        """The same GPU whichever way it was named (`0`, `GPU-<uuid>`): what the host registry holds."""
        return self.uuid or self.token


@dataclass
class Probe:
    """What torch in this environment can do with this machine's GPUs."""

    torch: str
    cuda: str | None  # the wheel's CUDA version (None: a CPU-only build)
    arch_list: list[str]
    driver: str | None  # the NVIDIA driver's version, when one is installed
    available: bool
    problem: str | None  # why torch cannot use CUDA (its own warning, first line)
    gpus: list[Gpu] = field(default_factory=list)
    visible: str | None = None  # the CUDA_VISIBLE_DEVICES it ran under


def visible_tokens(env: dict[str, str]) -> list[str] | None:
    """The user's CUDA_VISIBLE_DEVICES as a list (None: unset, every GPU is visible)."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [t.strip() for t in value.split(",") if t.strip()]


def nothing_visible(env: dict[str, str]) -> bool:
    """Certainly no GPU, without asking CUDA (cheap: the common CPU case skips the probe): the user
    hid them all, or no NVIDIA driver library is installed. Anything else is for torch to say, in
    the probe."""
    tokens = visible_tokens(env)
    if tokens is not None and (not tokens or tokens[0] == "-1"):
        return True
    return not driver_library(env)


def driver_library(env: dict[str, str]) -> bool:
    """libcuda, which torch loads to talk to the driver, is where the loader finds it (ldconfig's
    cache, as on Linux and WSL2's /usr/lib/wsl/lib, or LD_LIBRARY_PATH)."""
    dirs = [d for d in env.get("LD_LIBRARY_PATH", "").split(":") if d]
    return any(any(Path(d).glob("libcuda.so*")) for d in dirs) or ctypes.util.find_library("cuda") is not None


def driver_version() -> str | None:
    """The kernel module's version, read without CUDA (`/proc/driver/nvidia/version`)."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return found.group(1) if found else None


def runs_on(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """NVIDIA's binary compatibility rule: a cubin for sm_XY runs on sm_XZ with Z >= Y (same
    major); PTX for compute_XY is compiled on load for any capability >= XY. Arch-specific
    targets (sm_90a) run only on that exact capability."""
    major, minor = capability
    for arch in arch_list:
        found = re.fullmatch(r"(sm|compute)_(\d+?)(\d)(a|f)?", arch)
        if not found:
            continue
        kind, a_major, a_minor, suffix = found.group(1), int(found.group(2)), int(found.group(3)), found.group(4)
        if suffix == "a" and (a_major, a_minor) != capability:
            continue
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= capability:
            return True
    return False


def driver_too_old(driver: str | None, cuda: str | None) -> str | None:
    """The minimum driver this wheel's CUDA needs, when `driver` is older; else None."""
    if not driver or not cuda:
        return None
    need = MIN_DRIVER.get(int(cuda.split(".")[0]))
    version = lambda text: tuple(int(p) for p in text.split("."))  # noqa: E731
    return need if need and version(driver) < version(need) else None


def torch_build() -> tuple[str, str | None]:
    """torch's version and CUDA version, read from torch/version.py without importing torch (the
    orchestrator of a CPU sweep never needs torch itself)."""
    import importlib.metadata

    try:
        path = Path(importlib.metadata.distribution("torch").locate_file("torch/version.py"))
        names: dict = {}
        exec(compile(path.read_text(), str(path), "exec"), names)  # noqa: S102 (torch's own file, assignments only)
        return names["__version__"], names["cuda"]
    except (importlib.metadata.PackageNotFoundError, OSError, KeyError, SyntaxError):  # an unusual install
        import torch

        return torch.__version__, torch.version.cuda


def probe(env: dict[str, str] | None = None, check: list[int] | None = None) -> Probe:
    """Ask the machine, in a subprocess that sees the user's CUDA_VISIBLE_DEVICES in PCI order;
    the tiny kernel runs on the GPUs at the positions in `check` only (None: on every one)."""
    env = dict(os.environ if env is None else env)
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    if nothing_visible(env):
        version, cuda = torch_build()
        return Probe(version, cuda, [], driver_version(), False, NO_GPU)  # no GPU to check archs against
    only = [] if check is None else ["--check", ",".join(map(str, check)) or "none"]
    try:
        done = subprocess.run([sys.executable, "-m", "sweeper.gpus", *only], env=env, capture_output=True,
                              text=True, timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise SpecError("--gpus", [("", f"CUDA did not answer within {PROBE_TIMEOUT:.0f} s (a hung driver? "
                                         "`nvidia-smi` should answer at once); --gpus none trains on the CPU")]) from None
    answer = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not answer:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SpecError("--gpus", [("", f"could not ask CUDA about this machine's GPUs: {tail}")])
    return from_json(json.loads(answer[0][len(MARKER):]), env)


def from_json(found: dict, env: dict[str, str]) -> Probe:
    """The probe's answer, each GPU named by the user's own CUDA_VISIBLE_DEVICES token."""
    tokens = visible_tokens(env)
    gpus = [Gpu(i, tokens[i] if tokens and i < len(tokens) else str(i), g["name"], tuple(g["capability"]),
                g["memory"], g["uuid"], g["problem"], g.get("exclusive")) for i, g in enumerate(found["gpus"])]
    return Probe(**{**found, "gpus": gpus}, visible=env.get("CUDA_VISIBLE_DEVICES"))


def unavailable_reason(said: list[str], cpu_build: bool) -> str:
    """Why torch.cuda.is_available() is False: torch warns when CUDA fails (an old driver...) and
    says nothing when CUDA simply finds no device (no GPU, a UUID that names none) or when it is a
    CPU-only build, which beside an NVIDIA driver is a wrong install, not a CPU machine."""
    if said:
        return said[0]
    return "this is a CPU-only build of torch, on a machine with an NVIDIA driver" if cpu_build else NO_GPU


def _probe_here(check: list[int] | None = None) -> dict:
    """`probe`'s subprocess: CUDA may be initialised here. Properties are read for every visible
    GPU (no context needed); the kernel runs only on the positions in `check` (None: all)."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    said = [str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()]
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "arch_list": torch.cuda.get_arch_list(),
           "driver": driver_version(), "available": available, "gpus": [],
           "problem": None if available else unavailable_reason(said, torch.version.cuda is None)}
    modes = compute_modes() if available else {}
    for i in range(torch.cuda.device_count() if available else 0):
        p = torch.cuda.get_device_properties(i)
        uuid = str(getattr(p, "uuid", ""))
        mode = modes.get(uuid)
        gpu = {"name": p.name, "capability": [p.major, p.minor], "memory": p.total_memory, "uuid": uuid,
               "problem": None, "exclusive": None if mode is None else mode == EXCLUSIVE_PROCESS}
        if check is None or i in check:
            try:
                torch.ones(1, device=f"cuda:{i}").add_(1).item()
            except Exception as exc:  # e.g. "no kernel image is available for execution on the device"
                gpu["problem"] = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        out["gpus"].append(gpu)
    return out


def compute_modes() -> dict[str, int]:
    """Each GPU's compute mode by UUID (without "GPU-", as torch prints it), from NVML, the
    driver's own library (torch does not expose the mode); {} where NVML cannot be loaded."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() != 0:
            return {}
    except (OSError, AttributeError):  # no NVML, or one without these entry points
        return {}
    modes: dict[str, int] = {}
    try:
        count = ctypes.c_uint()
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return {}
        for i in range(count.value):
            handle, mode, uuid = ctypes.c_void_p(), ctypes.c_int(), ctypes.create_string_buffer(96)
            if (nvml.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)) == 0
                    and nvml.nvmlDeviceGetUUID(handle, uuid, 96) == 0
                    and nvml.nvmlDeviceGetComputeMode(handle, ctypes.byref(mode)) == 0):
                modes[uuid.value.decode().removeprefix("GPU-")] = mode.value
    finally:
        nvml.nvmlShutdown()
    return modes


def parse(text: str | None) -> list[str] | None:
    """`--gpus` as given: None (every visible GPU), [] (`none`: the CPU) or ids/UUIDs."""
    if text is None:
        return None
    if text.strip().lower() == NONE:
        return []
    ids = [g.strip() for g in text.split(",") if g.strip()]
    numbers = all(g.isdigit() for g in ids)
    if not ids or not (numbers or all(re.fullmatch(r"(GPU|MIG)-[0-9A-Za-z-]+(/\d+/\d+)?", g) for g in ids)):
        raise SpecError("--gpus", [("", "must be GPU numbers (0,1), or UUIDs (GPU-...) and MIG ids (MIG-...), "
                                        f"separated by commas, or none; got {quoted(text)}")])
    return ids


def choose(text: str | None, env: dict[str, str] | None = None, first_only: bool = False) -> list[Gpu]:
    """`--gpus` checked against this machine, the kernel run on those GPUs only (`first_only`: a
    command that scores on one GPU, the first). UUIDs and MIG ids are resolved by CUDA itself: the
    probe sees exactly those devices, in that order."""
    requested = parse(text)
    if requested == []:
        return []
    if first_only and requested is not None:
        requested = requested[:1]
    env = dict(os.environ if env is None else env)
    if requested is not None and not requested[0].isdigit():
        # one probe each: a process sees at most one MIG device, whatever the variable lists
        with ThreadPoolExecutor() as pool:
            each = list(pool.map(lambda token: probe({**env, "CUDA_VISIBLE_DEVICES": token}), requested))
        return select_ids(requested, each, lambda: probe(env, check=[]))
    chosen = select(requested, probe(env, check=checked_positions(requested, first_only)))
    return chosen[:1] if first_only else chosen


def checked_positions(requested: list[str] | None, first_only: bool = False) -> list[int] | None:
    """The visible GPUs `--gpus` numbers, where the probe runs its kernel (None: every one)."""
    if requested is None:
        return [0] if first_only else None
    return sorted({int(r) for r in requested})


def select_ids(requested: list[str], each: list[Probe], machine: Callable[[], Probe]) -> list[Gpu]:
    """UUIDs or MIG ids, each probed alone (`each`); an id under which CUDA sees nothing is named,
    beside what the machine has (`machine`: every visible GPU, asked only then, no kernel run)."""
    unknown = [token for token, found in zip(requested, each) if not found.gpus and
               (found.available or found.problem == NO_GPU)]
    if unknown:  # a typo, or a machine where CUDA works for no GPU at all
        whole = machine()
        if not whole.available:
            select(["0"], whole)  # raises with the machine's reason
        listed = "; ".join(f"{g.position}: {g.name} GPU-{g.uuid}" for g in whole.gpus) or "none"
        raise SpecError("--gpus", [("", f"CUDA finds no GPU {', '.join(unknown)} on this machine (it sees "
                                         f"{listed}); UUIDs and MIG ids as `nvidia-smi -L` lists them")])
    for found in each:
        select(["0"], found)  # raises with the reason
    merged = Probe(**{**each[0].__dict__, "gpus": [dataclasses.replace(f.gpus[0], position=i)
                                                   for i, f in enumerate(each)]})
    return select([str(i) for i in range(len(requested))], merged)


def describe(found: Probe) -> str:
    shown = "; ".join(f"{g.position}: {g.name} sm_{g.capability[0]}{g.capability[1]}" for g in found.gpus)
    return f"{len(found.gpus)} visible ({shown})" if found.gpus else "none visible"


def select(requested: list[str] | None, found: Probe) -> list[Gpu]:
    """The GPUs a command trains on, each checked; any problem is one error naming `--gpus`,
    what the machine has and what to do."""
    if requested == []:
        return []
    wheel = f"torch {found.torch} (CUDA {found.cuda or 'none: a CPU-only build'})"
    if not found.available:
        if requested is None and found.problem == NO_GPU:
            return []  # no GPU here and none asked for: the CPU
        need = driver_too_old(found.driver, found.cuda)
        why = (f"the NVIDIA driver is {found.driver}; {wheel} needs {need} or newer. "
               f"Update the driver, or install a build for older drivers: {OLDER_BUILDS}" if need else
               f"{wheel} cannot use CUDA here: {found.problem}")
        hint = "" if requested is not None else "; --gpus none trains on the CPU on purpose"
        raise SpecError("--gpus", [("", why + hint)])
    chosen = []
    for ask in requested if requested is not None else [str(g.position) for g in found.gpus]:
        gpu = found.gpus[int(ask)] if int(ask) < len(found.gpus) else None
        if gpu is None:
            raise SpecError("--gpus", [("", f"no visible GPU {ask}: this machine has {describe(found)}"
                                             + (f" within CUDA_VISIBLE_DEVICES={found.visible}"
                                                if found.visible is not None else ""))])
        if not runs_on(gpu.capability, found.arch_list):
            raise SpecError("--gpus", [("", f"{gpu.label}: {wheel} has kernels for "
                                             f"{', '.join(found.arch_list)} only. Install a build for "
                                             f"your GPU: {OLDER_BUILDS}")])
        if gpu.problem:
            raise SpecError("--gpus", [("", f"{gpu.label} cannot run {wheel}: {gpu.problem}")])
        chosen.append(gpu)
    return chosen


def check_exclusive(assigned: list[Gpu]) -> None:
    """`assigned`: each slot's GPU. A GPU in EXCLUSIVE_PROCESS compute mode runs one process at a
    time: a second trial there would fail as "busy or unavailable" and count against its
    configuration."""
    for gpu in dict.fromkeys(assigned):
        if gpu.exclusive and assigned.count(gpu) > 1:
            raise SpecError("--workers", [("", f"{gpu.label} is in EXCLUSIVE_PROCESS compute mode: one process at "
                                                f"a time, not {assigned.count(gpu)} trials; use --workers "
                                                f"{len(set(assigned))} (one trial per GPU), or ask the cluster's "
                                                "admin for `nvidia-smi -c DEFAULT`")])


def check_precision(values: list[str], gpus: list[Gpu]) -> None:
    """`precision: bf16` on a GPU below sm_80 is refused: torch emulates it there."""
    slow = [g for g in gpus if g.capability < NATIVE_BF16]
    if "bf16" in values and slow:
        raise SpecError("train.precision", [("", f"bf16 on {slow[0].label} is emulated, far slower than "
                                                 "fp16; use precision: fp16 (or auto, which picks it there)")])


if __name__ == "__main__":
    # `--check 0,2` (or `--check none`): the kernel on those positions only; by hand: on every GPU
    positions = sys.argv[2] if sys.argv[1:2] == ["--check"] else None
    print(MARKER + json.dumps(_probe_here(None if positions is None else
                                          [int(p) for p in positions.split(",") if p.isdigit()])))
