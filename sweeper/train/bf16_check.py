"""Does bf16 work on this CPU? Checked once per machine before a sweep trains with
`precision: auto` on the CPU.

On some virtual machines oneDNN's AMX bf16 kernels return non-finite values at random (the AMX
tile state is not preserved), so trials are pruned as "non-finite loss" with no hint why. The
check trains a tiny network a few steps under bf16 autocast and in fp32 from the same start, in a
fresh process (oneDNN picks its kernels once per process, from ONEDNN_MAX_CPU_ISA); non-finite
or far-off bf16 losses make it unsafe. Then the same with oneDNN capped at AVX512-BF16 (no AMX);
if that is unsafe too, CPU workers train in fp32. The verdict is cached per CPU model, torch
version and oneDNN cap, in ~/.cache/sweeper (XDG_CACHE_HOME).

SWEEPER_BF16_CHECK forces what the check sees, on any CPU: `nan` (bf16 is broken whatever the
kernels) or `nan-amx` (broken only with oneDNN's default, uncapped kernels); it is part of the
cache key.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

FORCE_ENV = "SWEEPER_BF16_CHECK"
ISA_ENV = "ONEDNN_MAX_CPU_ISA"
SAFE_ISA = "AVX512_CORE_BF16"  # bf16 without AMX
CPU_BF16_ENV = "SWEEPER_CPU_BF16"  # "0": the workers' `auto` is fp32 on the CPU (device.py)
STEPS, REPEATS = 5, 3  # AMX's faults are random: several short runs catch them
TOLERANCE = 0.1  # bf16 losses within 10% of fp32's (relative), step by step


@dataclass(frozen=True)
class Verdict:
    """What CPU workers use: bf16 as is, bf16 with oneDNN capped (isa), or fp32; and why."""

    bf16: bool
    isa: str | None
    why: str

    def env(self) -> dict[str, str]:
        """What the workers' environment needs for it."""
        return {**({ISA_ENV: self.isa} if self.isa else {}), **({} if self.bf16 else {CPU_BF16_ENV: "0"})}

    def message(self) -> str | None:
        """A line for the sweep's output when the check changed something."""
        if self.bf16 and self.isa is None:
            return None
        then = f"CPU workers train bf16 with {ISA_ENV}={self.isa}" if self.bf16 else "CPU workers train in fp32"
        return f"precision auto: {self.why}; {then} (checked once per machine, cached)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_native_bf16() -> bool:
    """bf16 in hardware (AVX512-BF16 or AMX), read from /proc/cpuinfo on Linux so that the
    orchestrator need not import torch; torch's own check elsewhere."""
    if os.environ.get(CPU_BF16_ENV) == "0":  # the sweep's check found bf16 broken here
        return False
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is not None:
        return "avx512_bf16" in flags or "amx_tile" in flags
    import torch

    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def _cache_file() -> Path:
    from sweeper.gpus import torch_build

    from sweeper.atomic_files import user_cache_dir

    base = user_cache_dir()
    key = "|".join([_cpu_model(), torch_build()[0], os.environ.get(ISA_ENV, ""), os.environ.get(FORCE_ENV, "")])
    return base / f"bf16-check-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def probe() -> str | None:
    """In this process: None when bf16 training tracks fp32, else what went wrong."""
    import torch
    from torch import nn

    forced = os.environ.get(FORCE_ENV, "")
    capped = os.environ.get(ISA_ENV, "").upper() == SAFE_ISA
    for repeat in range(REPEATS):
        torch.manual_seed(repeat)
        start = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                              nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                              nn.Flatten(), nn.Linear(16, 5))
        x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 5, (16,))
        losses = {}
        for bf16 in (False, True):
            net = copy.deepcopy(start)
            optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
            losses[bf16] = []
            for _ in range(STEPS):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = nn.functional.cross_entropy(net(x).float(), y)
                if bf16 and (forced == "nan" or (forced == "nan-amx" and not capped)):
                    loss = loss * float("nan")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses[bf16].append(loss.item())
        for step, (want, got) in enumerate(zip(losses[False], losses[True])):
            if not torch.isfinite(torch.tensor(got)):
                return f"a non-finite bf16 loss at step {step + 1} of run {repeat + 1}"
            if abs(got - want) > TOLERANCE * abs(want):
                return f"bf16 loss {got:.4f} against fp32's {want:.4f} at step {step + 1} of run {repeat + 1}"
    return None


def _probe_in_child(isa: str | None) -> str | None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    if isa:
        env[ISA_ENV] = isa
    done = subprocess.run([sys.executable, "-m", "sweeper.train.bf16_check"], env=env,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the check itself failed ({last[:200]})"
    return json.loads(done.stdout.strip().splitlines()[-1])["problem"]


def verdict() -> Verdict:
    """This machine's verdict, from the cache or checked now (a few seconds, once)."""
    cache = _cache_file()
    try:
        found = json.loads(cache.read_text())
        return Verdict(found["bf16"], found["isa"], found["why"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    own = os.environ.get(ISA_ENV)  # the user's own cap is kept: no other is tried
    problem = _probe_in_child(None)
    kernels = f"with {ISA_ENV}={own}" if own else "with oneDNN's default kernels"
    if problem is None:
        result = Verdict(True, None, "bf16 checked")
    elif own:
        result = Verdict(False, None, f"bf16 on this CPU gave {problem} {kernels}")
    elif (capped := _probe_in_child(SAFE_ISA)) is None:
        result = Verdict(True, SAFE_ISA, f"bf16 on this CPU gave {problem} {kernels}")
    else:
        result = Verdict(False, None, f"bf16 on this CPU gave {problem} {kernels} and {capped} "
                                      f"with {ISA_ENV}={SAFE_ISA}")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"bf16": result.bf16, "isa": result.isa, "why": result.why,
                                   "cpu": _cpu_model()}))
        os.replace(tmp, cache)
    except OSError:
        pass  # checked again next time
    return result


if __name__ == "__main__":
    print(json.dumps({"problem": probe()}))
