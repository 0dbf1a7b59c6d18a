"""The GPU path end to end on one GPU, in under 8 minutes; prints one table (benchmarks/gpu_smoke.sh).

Checks, each with real `sweeper` processes: the machine (driver, capability, native bf16,
/dev/shm); a quick sweep of two trials sharing GPU 0 that must train every trial on `cuda`;
resnet50 images/s at 224 px in a real trial against the bare model step on that GPU (target
>= 0.8x); kill -9 of the orchestrator mid-trial and the next run resuming on CUDA; Ctrl-C leaving
no process on the GPU; `ensemble --gpus 0`; and the GPU-marked tests.

`--rehearse` runs the same flow on the CPU with small models (`--gpus none`), to check the script
itself on a machine without a GPU; its figures say nothing about GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "caltech20"


def sweeper(cwd: Path, *args, wait: bool = True, env: dict | None = None):
    cmd = [sys.executable, "-m", "sweeper", *map(str, args)]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=full_env, start_new_session=True)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=full_env, timeout=900)


def space(path: Path, study: str, data: Path | None, model: str, size: int, epochs: int, batch: int,
          n_trials: int) -> Path:
    doc = {"study": study, "model": {"name": model, "pretrained": False},
           "data": {**({"root": str(data)} if data else {"builtin": "digits"}), "image_size": size},
           "train": {"epochs": epochs, "batch_size": batch, "schedule": "cosine"},
           "search": {"n_trials": n_trials, "sampler": {"name": "random", "seed": 0}, "pruner": "none"},
           "space": {"lr": {"low": 0.005, "high": 0.05, "log": True}}}
    path.write_text(yaml.safe_dump(doc))
    return path


def said(done) -> str:
    """The last line a failed command printed (its `Error:` line)."""
    text = (done.stderr or "") + (done.stdout or "") if hasattr(done, "stderr") else ""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if done.returncode and lines else ""


def trials(cwd: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    found = optuna.load_study(study_name=study, storage=f"sqlite:///{cwd}/studies.db").get_trials()
    return sorted(found, key=lambda t: t.number)


def wait_until(predicate, timeout: float):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if predicate():
                return True
        except Exception:  # the store may not exist yet
            pass
        time.sleep(0.5)
    return False


def gpu_pids() -> set[int] | None:
    """Processes holding a CUDA context, from nvidia-smi (None: it is not installed)."""
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout
    return {int(p) for p in out.split() if p.strip().isdigit()}


def bare_step(model_name: str, size: int, batch: int, device: str, precision: str) -> float:
    """images/s of the model's fwd+bwd+step alone on a batch already on the device."""
    import timm
    import torch

    from sweeper.train.device import Amp

    model = timm.create_model(model_name, num_classes=20).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = Amp(precision, torch.device(device))
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 20, (batch,), device=device)
    torch.backends.cudnn.benchmark = True
    steps = 30 if device == "cuda" else 3
    for i in range(steps + 5):
        if i == 5:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with amp.autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        amp.step(loss, opt)
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA if SHARED_DATA.is_dir() else None)
    parser.add_argument("--rehearse", action="store_true", help="the same flow on the CPU, small models")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from sweeper import gpus

    rows: list[tuple[str, str, str, bool | None]] = []  # check, result, target, met
    gpu_arg = "none" if args.rehearse else "0"
    if args.rehearse:
        from sweeper.train.device import choose_precision, cpu_native_bf16

        device, cap_text = "cpu", "-"
        precision = choose_precision("auto", "cpu", native_cpu_bf16=cpu_native_bf16())
    else:
        try:
            chosen = gpus.choose("0")
        except Exception as exc:
            print(f"gpu_smoke: no usable GPU: {exc}", file=sys.stderr)
            return 2
        gpu = chosen[0]
        device, precision = "cuda", "bf16" if gpu.capability >= gpus.NATIVE_BF16 else "fp16"
        cap_text = f"{gpu.name}, sm_{gpu.capability[0]}{gpu.capability[1]}"
    found = gpus.probe()
    shm = shutil.disk_usage("/dev/shm").free / 2**30 if Path("/dev/shm").is_dir() else float("nan")
    rows.append(("machine", f"torch {found.torch}, CUDA {found.cuda}, driver {found.driver}; {cap_text}; "
                            f"native bf16: {precision == 'bf16'}; /dev/shm free {shm:.1f} GiB; "
                            f"{os.cpu_count()} cores", "", None))
    small, size = ("resnet18", 96) if not args.rehearse else ("resnet10t", 32)
    big, big_size, big_batch = ("resnet50", 224, 64) if not args.rehearse else ("resnet10t", 64, 32)
    work = Path(tempfile.mkdtemp(prefix="gpu_smoke-"))
    started = time.monotonic()

    # 1. a quick sweep, two trials at a time on one GPU
    done = sweeper(work, "run", "--space", space(work / "quick.yaml", "quick", args.data, small, size, 2, 32, 4),
                   "--workers", 2, "--gpus", gpu_arg)
    quick = trials(work, "quick") if done.returncode == 0 else []
    on = sum(t.user_attrs.get("device") == device for t in quick)
    shared = {t.user_attrs.get("gpu_sharing") for t in quick}
    rows.append(("quick sweep: trials on " + device, f"{on}/{len(quick)} (exit {done.returncode}{said(done)}); "
                 f"precision {sorted({t.user_attrs.get('precision') for t in quick} - {None})}",
                 "all", on == len(quick) == 4))
    if not args.rehearse:
        rows.append(("two trials sharing GPU 0", f"gpu_sharing {sorted(shared - {None})}", "[2]", shared == {2}))

    # 2. throughput: a real trial against the bare step
    done = sweeper(work, "run", "--space", space(work / "big.yaml", "big", args.data, big, big_size, 2, big_batch, 1),
                   "--gpus", gpu_arg)
    metrics = work / "trials" / "big" / "0" / "metrics.csv"
    trial_ips = float(metrics.read_text().splitlines()[-1].split(",")[-1]) if metrics.is_file() else float("nan")
    bare = bare_step(big, big_size, big_batch, device, precision)
    ratio = trial_ips / bare
    rows.append((f"{big} {big_size} px batch {big_batch}: trial / bare step",
                 f"{trial_ips:.0f} / {bare:.0f} images/s = {ratio:.2f}", ">= 0.8", ratio >= 0.8))

    # 3. kill -9 mid-trial, then the next run resumes on the same device
    long = space(work / "long.yaml", "long", args.data, small, size, 6, 32, 1)
    proc = sweeper(work, "run", "--space", long, "--gpus", gpu_arg, "--heartbeat", 1, wait=False)
    reached = wait_until(lambda: len(trials(work, "long")[0].intermediate_values) >= 2, 300)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)
    done = sweeper(work, "run", "--space", long, "--gpus", gpu_arg, "--heartbeat", 1)
    after = trials(work, "long") if done.returncode == 0 else []
    retry = next((t for t in after if t.user_attrs.get("retry_of") == 0), None)
    resumed = retry.user_attrs.get("resumed_after_epoch") if retry else None
    rows.append(("kill -9, run again: retry resumes", f"reached epoch 2: {reached}; retry "
                 f"{retry.state.name if retry else 'missing'} on {retry.user_attrs.get('device') if retry else '-'}, "
                 f"resumed after epoch {resumed}", f"COMPLETE on {device}, resumed >= 2",
                 bool(retry and retry.state.name == "COMPLETE" and retry.user_attrs.get("device") == device
                      and (resumed or 0) >= 2)))

    # 4. Ctrl-C leaves nothing on the GPU
    before = gpu_pids()
    proc = sweeper(work, "run", "--space", space(work / "stop.yaml", "stop", args.data, small, size, 6, 32, 1),
                   "--gpus", gpu_arg, wait=False)
    wait_until(lambda: trials(work, "stop")[0].intermediate_values, 300)
    os.killpg(proc.pid, signal.SIGINT)
    code = proc.wait(timeout=120)
    time.sleep(2)
    left = gpu_pids()
    extra = None if left is None or before is None else sorted(left - before)
    rows.append(("Ctrl-C: exit code, processes left on the GPU",
                 f"{code}; {'nvidia-smi not found' if extra is None else extra}", "130; []",
                 code == 130 and extra == [] if extra is not None else None))

    # 5. ensemble on the GPU
    done = sweeper(work, "ensemble", "--study", "quick", "--top", 2, "--gpus", gpu_arg, "--json")
    acc = json.loads(done.stdout)["ensemble"]["accuracy"] if done.returncode == 0 else None
    rows.append(("ensemble --gpus " + gpu_arg, f"exit {done.returncode}{said(done)}, accuracy {acc}", "exit 0",
                 done.returncode == 0))

    # 6. the GPU-marked tests
    if not args.rehearse:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        last = (done.stdout.strip().splitlines() or ["no output"])[-1]
        rows.append(("pytest -m gpu", last, "all passed", done.returncode == 0 and "passed" in last
                     and "failed" not in last))
    rows.append(("total wall time", f"{time.monotonic() - started:.0f} s", "< 480 s",
                 time.monotonic() - started < 480))

    width = max(len(r[0]) for r in rows)
    print(f"{'check':<{width}} | {'ok':<4} | {'target':<22} | result")
    for check, result, target, met in rows:
        mark = "-" if met is None else ("yes" if met else "NO")
        print(f"{check:<{width}} | {mark:<4} | {target:<22} | {result}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(m is not False for *_, m in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
