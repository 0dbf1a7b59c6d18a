"""The GPU path end to end, in one call on a lent GPU machine, in under 8 minutes; prints one table.
Run it through benchmarks/gpu_check.sh, which refuses at once without a GPU and installs the
wheels (benchmarks/gpu_wheels.sh) that machine's python lacks.

Each check runs real `sweeper` processes on GPU 0 of generated images:
  machine      torch, CUDA and driver versions, the GPU, its compute mode, cores, /dev/shm;
  refusals     a GPU that does not exist, no GPU visible, a mistyped UUID: exit 2, one line, no store;
  sharing      four trials, two at a time on one GPU: on cuda at bf16 (fp16 below sm_80), two
               contexts in nvidia-smi at once, each within its 0.95/2 memory cap;
  uuid + fp16  CUDA_VISIBLE_DEVICES=GPU-<uuid>, `--gpus 0`, one fp16 trial;
  oom          resnet50 at 512 px, batch 512 beside batch 32, two at a time: a real CUDA
               out-of-memory, failed, retried alone, failed again; the other trial completes;
  kill -9      the orchestrator killed mid-trial (fp16: its resume state holds the GradScaler's):
               no worker or fork server left, no trial stuck, the next run resumes after the
               last finished epoch;
  throughput   resnet50, 224 px, batch 64: a sweep's epochs against the bare timm loop (same
               model, batch, precision, channels_last) and the trial's loader alone (goal >= 0.8x);
  tests        `pytest tests/gpu`.
Checks run in that order, each under a time limit; past the budget the rest are marked skipped,
so the table always prints. Exit 0: every check met; 1: one missed; 2: no usable GPU.

`--rehearse` runs the same flow on the CPU with small models and an injected out-of-memory, to
check the script on a machine without a GPU; its figures say nothing about GPUs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from argparse import Namespace
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from sweeper import gpus  # noqa: E402
from sweeper.errors import SweeperError  # noqa: E402
from sweeper.testing import make_image_folder, tiny_space, write_space  # noqa: E402
from sweeper.train.device import precision_here  # noqa: E402
from throughput import loader_rate, model_rate, sweeper_rate  # noqa: E402

Row = tuple[str, str, str, "bool | None"]  # check, result, target, met (None: shown only)


class Check:
    """What every check needs: where it runs, on which device, and the time left."""

    def __init__(self, args: Namespace, work: Path, gpu: gpus.Gpu | None):
        self.rehearse, self.work, self.gpu = args.rehearse, work, gpu
        self.gpu_arg = "none" if args.rehearse else "0"
        self.device = "cpu" if args.rehearse else "cuda"
        self.deadline = time.monotonic() + args.budget
        # the model and image size of the quick checks (fp16 is emulated on a CPU: keep it tiny there)
        self.small = ("resnet18", 64) if not args.rehearse else ("resnet10t", 32)
        self.data = make_image_folder(work / "data", classes=20, per_class=120 if not args.rehearse else 15,
                                      size=128 if not args.rehearse else 32)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sweeper(self, cwd: Path, *args, env: dict | None = None, wait: bool = True):
        """`sweeper ARGS` in its own session, as a user runs it; PYTHONPATH as gpu_check.sh set it."""
        cwd.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "sweeper", *map(str, args)]
        full = {**os.environ, **(env or {})}
        if not wait:
            return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=full, start_new_session=True)
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=full,
                              timeout=max(10.0, self.left()))

    def space(self, folder: Path, study: str, model: str, size: int, epochs: int, batch, n_trials: int,
              data: Path | None = None, **train) -> Path:
        doc = tiny_space(data or self.data, study=study, model={"name": model, "pretrained": False},
                         train={"epochs": epochs, "batch_size": batch, "precision": "auto", "lr": 0.01, **train},
                         search={"n_trials": n_trials, "sampler": {"name": "random", "seed": 0}, "pruner": "none"},
                         data={"image_size": size})
        if isinstance(batch, list):  # one trial per batch size
            doc["train"].pop("batch_size")
            doc["space"] = {"batch_size": {"choices": batch}}
            doc["search"]["sampler"] = "grid"
        folder.mkdir(parents=True, exist_ok=True)
        return write_space(folder / f"{study}.yaml", doc)


def trials(cwd: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    found = optuna.load_study(study_name=study, storage=f"sqlite:///{cwd}/studies.db").get_trials()
    return sorted(found, key=lambda t: t.number)


def said(done) -> str:
    """A failed command's last line (its `Error:` line), for the table."""
    lines = [line for line in ((done.stderr or "") + (done.stdout or "")).splitlines() if line.strip()]
    return f": {lines[-1][:160]}" if done.returncode and lines else ""


def wait_until(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if predicate():
                return True
        except Exception:  # the store may not exist yet
            pass
        time.sleep(0.5)
    return False


def gpu_apps() -> dict[int, int] | None:
    """Processes holding a CUDA context and their memory (MiB), from nvidia-smi (None: not there)."""
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30).stdout
    apps = {}
    for line in out.splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip().isdigit():
            apps[int(pid)] = int(mib.strip()) if mib.strip().isdigit() else 0
    return apps


class Watch(threading.Thread):
    """Samples nvidia-smi while a sweep runs: the most contexts at once and each one's peak MiB."""

    def __init__(self):
        super().__init__(daemon=True)
        self.most, self.peak, self.stop = 0, {}, threading.Event()
        self.before = set(gpu_apps() or {})

    def run(self):
        while not self.stop.wait(0.5):
            apps = {p: m for p, m in (gpu_apps() or {}).items() if p not in self.before}
            self.most = max(self.most, len(apps))
            for pid, mib in apps.items():
                self.peak[pid] = max(self.peak.get(pid, 0), mib)


def machine(c: Check, found: gpus.Probe) -> list[Row]:
    shm = shutil.disk_usage("/dev/shm").free / 2**30 if Path("/dev/shm").is_dir() else float("nan")
    gpu = (f"{c.gpu.name}, sm_{c.gpu.capability[0]}{c.gpu.capability[1]}, {c.gpu.memory / 2**30:.0f} GiB, "
           f"compute mode {'EXCLUSIVE_PROCESS' if c.gpu.exclusive else 'default' if c.gpu.exclusive is False else '?'}"
           if c.gpu else "none (rehearsal on the CPU)")
    return [("machine", f"torch {found.torch}, CUDA {found.cuda}, driver {found.driver}; {gpu}; "
                        f"{os.cpu_count()} cores, /dev/shm free {shm:.1f} GiB", "", None)]


def refusals(c: Check) -> list[Row]:
    """Three commands that must stop at the probe: exit 2, one `Error: --gpus` line, no store."""
    cases = [("--gpus 7 (no such GPU)", ["--gpus", "7"], {}, "no visible GPU 7"),
             ("no GPU visible, --gpus 0", ["--gpus", "0"], {"CUDA_VISIBLE_DEVICES": ""}, "cannot use CUDA here"),
             ("a mistyped UUID", ["--gpus", "GPU-00000000-dead-beef-0000-000000000000"], {},
              "CUDA finds no GPU GPU-00000000-dead-beef")]

    def one(i: int) -> Row:
        label, flags, env, expect = cases[i]
        expect = "--gpus: " if c.rehearse else expect  # a CPU machine refuses all three as "no GPU"
        cwd = c.work / f"refused{i}"
        done = c.sweeper(cwd, "run", "--space", c.space(cwd, "refused", "resnet18", 32, 1, 16, 1), *flags, env=env)
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        ok = done.returncode == 2 and len(errors) == 1 and expect in errors[0] and not (cwd / "studies.db").exists()
        return (f"refused: {label}", f"exit {done.returncode}; {errors[0][:150] if errors else done.stderr[-150:]}",
                f"exit 2, '{expect}'", ok)

    with ThreadPoolExecutor() as pool:  # each stops at the probe: seconds, at once
        return list(pool.map(one, range(len(cases))))


def sharing(c: Check) -> list[Row]:
    cwd = c.work / "shared"
    watch = Watch()
    watch.start()
    done = c.sweeper(cwd, "run", "--space", c.space(cwd, "shared", *c.small, 2, 64, 4), "--workers", 2,
                     "--gpus", c.gpu_arg)
    watch.stop.set()
    found = trials(cwd, "shared") if done.returncode == 0 else []
    expected = precision_here("auto", torch.device("cpu")) if c.rehearse else \
        "bf16" if c.gpu.capability >= gpus.NATIVE_BF16 else "fp16"
    seen = {(t.state.name, t.user_attrs.get("device"), t.user_attrs.get("precision"),
             t.user_attrs.get("gpu_sharing") if c.gpu else "-") for t in found}
    want = {("COMPLETE", c.device, expected, 2 if c.gpu else "-")}
    rows = [("4 trials, 2 at a time: state, device, precision, gpu_sharing",
             f"{sorted(seen, key=str)} ({len(found)} trials, exit {done.returncode}{said(done)})",
             str(sorted(want)), len(found) == 4 and seen == want and done.returncode == 0)]
    if not c.rehearse:
        half = c.gpu.memory / 2**20 / 2  # each allocator is capped at 0.95 / 2; its context fits in the rest
        blind = watch.most == 0  # inside a container nvidia-smi may list no process at all
        rows.append(("contexts at once in nvidia-smi; peak MiB each",
                     f"{watch.most}; {sorted(watch.peak.values())} (half the GPU: {half:.0f} MiB)"
                     + ("; nvidia-smi listed no process (a container's PID namespace?)" if blind else ""),
                     "2; each <= half", None if blind else
                     watch.most == 2 and all(m <= half for m in watch.peak.values())))
    return rows


def uuid_fp16(c: Check) -> list[Row]:
    cwd = c.work / "uuid"
    token = None if c.rehearse else f"GPU-{c.gpu.uuid}"
    done = c.sweeper(cwd, "run", "--space", c.space(cwd, "fp16", *c.small, 2, 64, 1, precision="fp16"),
                     "--gpus", c.gpu_arg, env={"CUDA_VISIBLE_DEVICES": token} if token else None)
    (trial,) = trials(cwd, "fp16") if done.returncode == 0 else [None]
    attrs = trial.user_attrs if trial else {}
    rows = [("fp16 trial: state, precision, val_acc",
             f"{trial.state.name if trial else 'none'}, {attrs.get('precision')}, {trial.value if trial else None} "
             f"(exit {done.returncode}{said(done)})", "COMPLETE, fp16",
             bool(trial and trial.state.name == "COMPLETE" and attrs.get("precision") == "fp16"))]
    if token:
        rows.append((f"CUDA_VISIBLE_DEVICES={token[:16]}..., --gpus 0", f"worker's CUDA_VISIBLE_DEVICES "
                     f"{attrs.get('cuda_visible_devices')}, device {attrs.get('device')}", "that UUID, cuda",
                     attrs.get("cuda_visible_devices") == token and attrs.get("device") == "cuda"))
    return rows


def oom(c: Check) -> list[Row]:
    """Batch 512 of resnet50 at 512 px needs ~150 GB of activations: out of memory on any one GPU."""
    cwd = c.work / "oom"
    data = make_image_folder(c.work / "oom_data", classes=2, per_class=400 if not c.rehearse else 12, size=32)
    model, size, big = ("resnet50", 512, 512) if not c.rehearse else ("resnet10t", 32, 16)
    env = {"SWEEPER_INJECT_FAULT": "oom:0"} if c.rehearse else None  # the CPU has no cap to hit
    done = c.sweeper(cwd, "run", "--space", c.space(cwd, "oom", model, size, 1, [32, big], 2, data=data),
                     "--workers", 2, "--gpus", c.gpu_arg, env=env)
    found = trials(cwd, "oom") if (cwd / "studies.db").exists() else []
    failed = [t for t in found if t.state.name == "FAIL"]
    shown = "; ".join(f"#{t.number} batch {t.params.get('batch_size')} {t.state.name}"
                      + (f" ({t.user_attrs.get('reason', '')[:170]})" if t.state.name == "FAIL" else "")
                      for t in found)
    retried = any(t.user_attrs.get("retry_of") is not None and t.user_attrs.get("alone") for t in found)
    completed = [t for t in found if t.state.name == "COMPLETE"]
    return [("real CUDA out-of-memory while sharing", f"exit {done.returncode}; {shown}",
             "OOM FAIL, retried alone; batch 32 COMPLETE",
             done.returncode == 0 and bool(failed) and retried and bool(completed))]


def kill_resume(c: Check) -> list[Row]:
    cwd = c.work / "kill"
    # at fp16 on a GPU, so that the state it resumes from carries the GradScaler's
    space = c.space(cwd, "long", *c.small, 6, 64, 1, precision="auto" if c.rehearse else "fp16")
    proc = c.sweeper(cwd, "run", "--space", space, "--gpus", c.gpu_arg, "--heartbeat", 1,
                     env={"SWEEPER_INJECT_FAULT": "slow:0"}, wait=False)  # 2 s before each epoch after the first
    reached = wait_until(lambda: len(trials(cwd, "long")[0].intermediate_values) >= 2, min(180, c.left()))
    ours = descendants(proc.pid)  # its fork servers and their workers
    os.kill(proc.pid, signal.SIGKILL)  # the orchestrator only: its fork servers and workers must follow
    proc.wait()
    gone = wait_until(lambda: not any(alive(p) for p in ours - {proc.pid}), 20)
    left = sorted(p for p in ours - {proc.pid} if alive(p))
    resume = cwd / "trials" / "long" / "0" / "resume.pt"
    scale = torch.load(resume, weights_only=False, map_location="cpu").get("scaler", {}).get("scale") \
        if resume.is_file() else None
    done = c.sweeper(cwd, "run", "--space", space, "--gpus", c.gpu_arg, "--heartbeat", 1)
    after = trials(cwd, "long") if done.returncode == 0 else []
    stuck = [t.number for t in after if t.state.name == "RUNNING"]
    retry = next((t for t in after if t.user_attrs.get("retry_of") == 0), None)
    resumed = retry.user_attrs.get("resumed_after_epoch") if retry else None
    return [(f"kill -9 of the orchestrator mid-trial ({'auto' if c.rehearse else 'fp16'})", f"processes left {left}; epoch 2 reached: {reached}; "
             f"GradScaler scale in its resume.pt: {scale}", "[]; a scale", gone and reached and bool(scale or c.rehearse)),
            ("next run: stuck trials; retry", f"{stuck}; {retry.state.name if retry else 'none'} on "
             f"{retry.user_attrs.get('device') if retry else '-'}, resumed after epoch {resumed}{said(done)}",
             f"[]; COMPLETE on {c.device}, resumed >= 2",
             not stuck and bool(retry and retry.state.name == "COMPLETE"
                                and retry.user_attrs.get("device") == c.device and (resumed or 0) >= 2))]


def descendants(pid: int) -> set[int]:
    """The process and every process below it (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo += children.get(p, [])
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def throughput(c: Check) -> list[Row]:
    model, size, batch = ("resnet50", 224, 64) if not c.rehearse else ("resnet10t", 32, 32)
    args = Namespace(model=model, size=size, batch=batch, epochs=4, num_workers="auto")
    sweep = sweeper_rate(c.work / "throughput", c.data, args)
    device = torch.device(c.device)
    loader = loader_rate(c.work / "throughput", c.work / "throughput" / "trials" / "bench" / "0" / "config.json",
                         device)
    classes = len(list((c.data / "train").iterdir()))
    bare = model_rate(classes, 50 if not c.rehearse else 5, args, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return [(f"{model} {size} px batch {batch}: sweep / bare timm loop",
             f"{sweep:.0f} / {bare:.0f} images/s = {sweep / bare:.2f}", ">= 0.8", sweep / bare >= 0.8),
            ("the trial's loader alone (to the device)", f"{loader:.0f} images/s "
             f"({'the loader bounds it' if loader < bare else 'the model bounds it'})", "", None)]


def tests(c: Check) -> list[Row]:
    if c.rehearse:
        return []
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=max(10.0, c.left()))
    last = (done.stdout.strip().splitlines() or ["no output"])[-1]
    return [("pytest tests/gpu", last, "all passed",
             done.returncode == 0 and "passed" in last and "failed" not in last and "skipped" not in last)]


CHECKS = [refusals, sharing, uuid_fp16, oom, kill_resume, throughput, tests]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rehearse", action="store_true", help="the same flow on the CPU, small models")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; later checks are skipped past it")
    parser.add_argument("--only", help="checks to run, by name, comma-separated (e.g. a rerun of one that missed): "
                                       + ", ".join(c.__name__ for c in CHECKS))
    args = parser.parse_args()
    checks = [c for c in CHECKS if not args.only or c.__name__ in args.only.split(",")]
    started = time.monotonic()
    gpu = None
    if not args.rehearse:
        try:
            gpu = gpus.choose("0")[0]
        except SweeperError as exc:
            print(f"gpu_check: no usable GPU: {exc}", file=sys.stderr)
            return 2
    found = gpus.probe(check=[]) if gpu else gpus.probe({**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    c = Check(args, work, gpu)
    rows = machine(c, found)
    for check in checks:
        if c.left() <= 0:
            rows.append((check.__name__, "skipped: out of time", "", False))
            continue
        try:
            rows += check(c)
        except Exception as exc:  # one broken check must not hide the others
            rows.append((check.__name__, f"error: {type(exc).__name__}: {str(exc)[:200]}", "", False))
    total = time.monotonic() - started
    rows.append(("total wall time", f"{total:.0f} s", "< 480 s", total < 480 if not args.rehearse else None))

    width = max(len(r[0]) for r in rows)
    print(f"{'check':<{width}} | {'ok':<4} | {'target':<28} | result")
    for check, result, target, met in rows:
        mark = "-" if met is None else ("yes" if met else "NO")
        print(f"{check:<{width}} | {mark:<4} | {target:<28} | {result}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(m is not False for *_, m in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
