"""Which GPUs a command may use, checked before any work starts.

GPUs are named within what the user made visible: under `CUDA_VISIBLE_DEVICES=4,5,6,7`,
`--gpus 0,1` means physical GPUs 4 and 5, and each worker gets the user's own token ("4",
"GPU-<uuid>" or "MIG-<uuid>") as its CUDA_VISIBLE_DEVICES, with CUDA_DEVICE_ORDER=PCI_BUS_ID so
that numbers are nvidia-smi's. `--gpus` also takes UUIDs and MIG ids; `--gpus none` trains on the
CPU on purpose.

The machine is asked once, in a subprocess (`python -m sweeper.gpus`): the orchestrator must not
initialise CUDA before its fork server forks. The probe runs one tiny kernel on each device, which
is the only test that catches every way a wheel and a machine disagree (an old driver, a GPU below
the wheel's architectures, a device a container hides).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sweeper.errors import SpecError, quoted

NONE = "none"
MARKER = "SWEEPER_GPUS "  # the probe's answer line (anything else on stdout is not ours)
PROBE_TIMEOUT = 120.0
NO_GPU = "no NVIDIA GPU is visible (no /dev/nvidia* device, or CUDA_VISIBLE_DEVICES is empty)"
# the oldest Linux driver each CUDA major release runs on (NVIDIA's CUDA compatibility guide,
# minor-version compatibility): a wheel built for CUDA 13.x needs 580 or newer
MIN_DRIVER = {12: "525.60.13", 13: "580.65.06"}
NATIVE_BF16 = (8, 0)  # Ampere and newer; below it torch emulates bf16, far slower than fp16
OLDER_BUILDS = ("pip install torch torchvision --index-url https://download.pytorch.org/whl/cu126 "
                "(CUDA 12.6 builds: drivers from 525, GPUs from sm_50); README: 'GPUs and drivers'")


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

    @property
    def label(self) -> str:
        return f"GPU {self.token} ({self.name}, sm_{self.capability[0]}{self.capability[1]})"


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
    """No GPU can be seen, without asking CUDA (cheap: the common CPU case skips the probe)."""
    tokens = visible_tokens(env)
    if tokens is not None and (not tokens or tokens[0] == "-1"):
        return True
    return not (Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia/gpus").is_dir()
                or any(Path("/dev").glob("nvidia[0-9]*")))


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


def probe(env: dict[str, str] | None = None) -> Probe:
    """Ask the machine, in a subprocess that sees the user's CUDA_VISIBLE_DEVICES in PCI order."""
    env = dict(os.environ if env is None else env)
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    if nothing_visible(env):
        import torch  # the arch list needs no GPU

        return Probe(torch.__version__, torch.version.cuda, torch.cuda.get_arch_list(), driver_version(),
                     False, NO_GPU)
    try:
        done = subprocess.run([sys.executable, "-m", "sweeper.gpus"], env=env, capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT)
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
    gpus = [Gpu(i, tokens[i] if tokens else str(i), g["name"], tuple(g["capability"]), g["memory"],
                g["uuid"], g["problem"]) for i, g in enumerate(found["gpus"])]
    return Probe(**{**found, "gpus": gpus}, visible=env.get("CUDA_VISIBLE_DEVICES"))


def _probe_here() -> dict:
    """`probe`'s subprocess: CUDA may be initialised here."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    said = [str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()]
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "arch_list": torch.cuda.get_arch_list(),
           "driver": driver_version(), "available": available, "gpus": [],
           "problem": None if available else (said[0] if said else "torch.cuda.is_available() is False")}
    for i in range(torch.cuda.device_count() if available else 0):
        p = torch.cuda.get_device_properties(i)
        gpu = {"name": p.name, "capability": [p.major, p.minor], "memory": p.total_memory,
               "uuid": str(getattr(p, "uuid", "")), "problem": None}
        try:
            torch.ones(1, device=f"cuda:{i}").add_(1).item()
        except Exception as exc:  # e.g. "no kernel image is available for execution on the device"
            gpu["problem"] = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        out["gpus"].append(gpu)
    return out


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


def choose(text: str | None, env: dict[str, str] | None = None) -> list[Gpu]:
    """`--gpus` checked against this machine. UUIDs and MIG ids are resolved by CUDA itself: the
    probe sees exactly those devices, in that order."""
    requested = parse(text)
    if requested == []:
        return []
    env = dict(os.environ if env is None else env)
    if requested is not None and not requested[0].isdigit():
        # one probe each: a process sees at most one MIG device, whatever the variable lists
        with ThreadPoolExecutor() as pool:
            each = list(pool.map(lambda token: probe({**env, "CUDA_VISIBLE_DEVICES": token}), requested))
        for token, found in zip(requested, each):
            if found.available and not found.gpus:
                raise SpecError("--gpus", [("", f"CUDA finds no GPU {token} (UUIDs and MIG ids as "
                                                 "`nvidia-smi -L` lists them)")])
            if not found.available:
                return select(["0"], found)  # raises with the reason
        merged = Probe(**{**each[0].__dict__, "gpus": [dataclasses.replace(f.gpus[0], position=i)
                                                       for i, f in enumerate(each)]})
        return select([str(i) for i in range(len(requested))], merged)
    return select(requested, probe(env))


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


def check_precision(values: list[str], gpus: list[Gpu]) -> None:
    """`precision: bf16` on a GPU below sm_80 is refused: torch emulates it there."""
    slow = [g for g in gpus if g.capability < NATIVE_BF16]
    if "bf16" in values and slow:
        raise SpecError("train.precision", [("", f"bf16 on {slow[0].label} is emulated, far slower than "
                                                 "fp16; use precision: fp16 (or auto, which picks it there)")])


if __name__ == "__main__":
    print(MARKER + json.dumps(_probe_here()))
