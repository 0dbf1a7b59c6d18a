"""One trial's training, top to bottom; run as `python -m sweeper.train.worker trials/<study>/<n>/config.json`.

The worker never touches the study store. It talks to its orchestrator over its own pipes:
one JSON line per event on stdout, and after each epoch it reads one line from stdin,
`continue` or `stop` (end of input, e.g. a dead orchestrator, also means stop).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from sweeper import atomic_files
from sweeper.cpu_share import CpuShare
from sweeper.data.loading import make_loaders
from sweeper.errors import SweeperError, WorkerError
from sweeper.redaction import redact
from sweeper.spec.trial_config import TrialConfig
from sweeper.train import device as devices
from sweeper.train import model as models
from sweeper.train import regularizers
from sweeper.train import resume
from sweeper.train.device import Amp
from sweeper.train.evaluation import Chosen, decision_steps, scores, validation_steps
from sweeper.train.position import Position, restore, save_resume_state
from sweeper.train.schedule import LrSchedule, set_lr
from sweeper.train.tracking import EpochCurves
from sweeper.train.uploads import Uploads

Report = Callable[[dict[str, Any]], bool]  # an event -> True to go on training
LOG_EVERY = 20  # steps between log lines, as in the user's mmcls logs
METRIC_FIELDS = ["epoch", "train_loss", "val_acc", "val_balanced_acc", "val_top5", "lr",
                 "seconds", "images_per_s"]
TEST_FIELDS = ["test_acc", "test_balanced_acc", "test_top5"]  # with record_test


GPU_THREADS = 2  # a GPU worker's own threads: the step runs on the GPU, loaders take the cores


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Phase:
    """What the worker is doing, for an out-of-memory reason wherever it happens."""

    now = "start-up"


def run_trial(config: TrialConfig, report: Report) -> str:
    """Train one configuration, reporting every epoch; returns `complete` or `stopped`."""
    uploads = Uploads(config.artifacts, config.artifact_key, Path(config.trial_dir))
    handled = uploads.store is not None and threading.current_thread() is threading.main_thread()
    if handled:  # Ctrl-C on the sweep: the last finished epoch's state reaches the store first
        previous = signal.signal(signal.SIGTERM, lambda *_: uploads.drain_and_die())
    try:
        outcome = _run_trial(config, report, uploads)
    except BaseException:
        with contextlib.suppress(Exception):
            uploads.drain(timeout=30)  # a resumable failure resumes after the last finished epoch
        raise
    finally:
        if handled:
            signal.signal(signal.SIGTERM, previous)
    if uploads.store is not None:  # a paused or finished trial's files are stored before it says so
        uploads.submit("metrics.csv", "log.txt")  # with the lines written after the last epoch
        uploads.drain()
        report({"event": "stored", "files": uploads.done})
    return outcome


def _run_trial(config: TrialConfig, report: Report, uploads: Uploads) -> str:
    device = devices.pick_device()
    # every worker registers on the host (cpu_share.py): a GPU worker's loader processes take
    # its share of the cores; a CPU worker trains with its share of threads
    share = CpuShare(gpu=devices.gpu_identity() if device.type == "cuda" else None)
    phase = Phase()
    try:
        if device.type == "cpu":
            share.apply()
        else:
            torch.set_num_threads(min(GPU_THREADS, share.cores))
        return _train(config, report, device, share, phase, uploads)
    except Exception as exc:
        if not devices.is_out_of_memory(exc):
            raise
        # the process exits next, which frees the memory; say where and why first
        raise WorkerError(f"out of memory in {phase.now} at batch_size={config.batch_size}: "
                          f"{devices.first_line(exc)}") from None
    finally:
        share.close()


def _train(config: TrialConfig, report: Report, device: torch.device, registered: CpuShare,
           phase: Phase, uploads: Uploads) -> str:
    share = registered if device.type == "cpu" else None  # threads are re-shared on a CPU only
    seed_everything(config.seed)
    fault = injected_fault(config.number)
    precision = devices.precision_here(config.precision, device)
    amp = Amp(precision, device)
    sharing = devices.apply_memory_share(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes
    out = Path(config.trial_dir)
    out.mkdir(parents=True, exist_ok=True)

    phase.now = "loading data"
    loaders = make_loaders(config, device, registered)
    classes, train_loader, val_loader, normalize = loaders.classes, loaders.train, loaders.val, loaders.normalize
    (out / "classes.txt").write_text("\n".join(classes) + "\n")
    uploads.submit("config.json", "classes.txt")

    phase.now = "creating the model"
    model = models.create(config.model, len(classes), config.pretrained, config.drop_path_rate)
    if fault == "oom_model":
        raise_fault("oom")
    frozen = models.freeze_stages(model, config.frozen_stages)
    phase.now = "moving the model to the device"
    model.to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model)
    criterion = regularizers.criterion(config)
    mix = regularizers.batch_mix(config, len(classes))
    ema = regularizers.weight_average(config, model)
    steps = len(train_loader)
    lr_at = LrSchedule.from_config(config, steps)
    chosen = Chosen(config.value)
    # the metrics of every finished epoch, earlier attempts' too; where in an epoch training stopped;
    # why an earlier attempt's state was not used (the trial then trains from epoch 0)
    done, at, not_resumed = restore(config, model, optimizer, chosen, amp, loaders.generator, ema)
    eval_steps = validation_steps(steps, config.eval_every)

    report({"event": "start", "classes": classes, "device": str(device), "precision": precision,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpu_sharing": sharing,
            "train_images": len(train_loader.dataset), "val_images": len(val_loader.dataset),
            "loader_workers": loaders.num_workers, "loader_note": loaders.note})
    if done:  # the orchestrator carries these epochs' values over, so the pruner sees the whole curve
        report({"event": "resumed", "records": done})
    fields = METRIC_FIELDS + (TEST_FIELDS if loaders.test is not None else [])
    with open(out / "log.txt", "a") as log, open(out / "metrics.csv", "w", newline="") as mf, \
            EpochCurves(config, done, log) as curves:
        metrics = csv.DictWriter(mf, fields, extrasaction="ignore")
        metrics.writeheader()
        for record in at.evals:
            metrics.writerow(record)
        print(f"trial {config.number}: {config.model} on {device} ({precision}), "
              f"{len(train_loader.dataset)} train / {len(val_loader.dataset)} val images, {len(classes)} classes, "
              f"params {json.dumps(config.params)}", file=log, flush=True)
        first = len(done)  # the first epoch this process trains (or finishes)
        if not_resumed:
            print(not_resumed, file=log, flush=True)
        if at.step:
            print(f"Resumed after step {at.step} of epoch {first + 1} from {config.resume_from}", file=log, flush=True)
        elif first:
            print(f"Resumed after epoch {first} from {config.resume_from}", file=log, flush=True)
        if share:
            print(share.describe(), file=log, flush=True)
        if loaders.note:
            print(loaders.note, file=log, flush=True)
        if ema is not None:
            print(f"Validation and the checkpoint use the EMA of the weights (decay {config.ema_decay})",
                  file=log, flush=True)
        first_step = at.step
        for epoch in range(first, config.epochs):
            if fault == "slow" and epoch:
                time.sleep(2.0)  # test hook: a window between epochs to strike in
            if share and epoch > first and share.apply():
                print(share.describe(), file=log, flush=True)
            models.train_mode(model, frozen)
            phase.now = "training step"
            if epoch > first or not at.step:  # a fresh epoch
                at = Position(epoch, 0, loaders.generator.get_state(), 0.0, 0, 0.0, at.evals)
            else:  # part-way: the same permutation as the interrupted epoch, its trained batches skipped
                loaders.generator.set_state(at.epoch_start_rng)
                loaders.batches.skip = at.step
            start = time.perf_counter() - at.seconds
            deciding = decision_steps(steps, epoch, config.decide_at)
            part_way = {**eval_steps, **deciding}
            loss_sum = torch.tensor(at.loss_sum, device=device)
            seen = at.seen
            # resumed after the epoch's last step (a part-epoch rung of a one-step epoch): no step runs
            lr, ms = optimizer.param_groups[0]["lr"], at.seconds * 1000 / max(1, at.step)
            for step, (x, y) in enumerate(train_loader, start=at.step):
                set_lr(optimizer, lr_at, epoch, epoch * steps + step)
                lr = optimizer.param_groups[0]["lr"]  # the head's
                x = normalize(x)
                y = y.to(device, non_blocking=True)
                if mix is not None:
                    x, y = mix(x, y)  # soft targets from here on
                loss = train_step(model, criterion, optimizer, amp, x, y, fault)
                if ema is not None:
                    ema.update(model)
                loss_sum += loss.detach() * len(y)
                seen += len(y)
                if epoch == first and step == first_step:
                    report({"event": "first_step"})
                if share and share.maybe_apply():  # another worker started or ended
                    print(share.describe(), file=log, flush=True)
                if (step + 1) % LOG_EVERY == 0 or step + 1 == steps:
                    ms = (time.perf_counter() - start) / (step + 1) * 1000
                    print(f"Epoch:[{epoch + 1:3d}/{config.epochs:3d}], step:[{step + 1:5d}/{steps:5d}], "
                          f"loss:[{loss.item():.3f}/{loss_sum.item() / seen:.3f}], time:{ms:.1f} ms, "
                          f"lr:{lr:.5f}", file=log, flush=True)
                if step + 1 in deciding or (step + 1 in eval_steps and step + 1 < steps):  # part-way
                    phase.now = "validation"
                    scored = regularizers.validated(model, ema)
                    record = {"epoch": epoch + part_way[step + 1], "train_loss": loss_sum.item() / seen,
                              **scores(scored, loaders, amp, len(classes)), "lr": lr,
                              "seconds": time.perf_counter() - start, "images_per_s": seen / (time.perf_counter() - start)}
                    metrics.writerow(record)
                    mf.flush()
                    print(f"Epoch {record['epoch']:g}: val acc {record['val_acc']:.4f}", file=log, flush=True)
                    at = Position(epoch, step + 1, at.epoch_start_rng, loss_sum.item(), seen,
                                  time.perf_counter() - start, at.evals + [record])
                    phase.now = "saving the resume state"
                    save_resume_state(config, model, optimizer, chosen, amp, done, loaders.generator, ema, at)
                    if not report({"event": "eval", **record, "decide": step + 1 in deciding}):
                        print(f"Stopped by the orchestrator at epoch {record['epoch']:g} (paused or pruned)",
                              file=log, flush=True)
                        uploads.submit(resume.RESUME)  # a trial paused here resumes from this state
                        return "stopped"
                    models.train_mode(model, frozen)
                    phase.now = "training step"
            train_loss = loss_sum.item() / seen
            if not math.isfinite(train_loss):
                print(f"Epoch {epoch + 1}: non-finite loss ({train_loss}); stopping", file=log, flush=True)
                report({"event": "nonfinite", "epoch": epoch + 1, "train_loss": train_loss})
                return "stopped"
            train_seconds = time.perf_counter() - start
            phase.now = "validation"
            if fault == "oom_val":
                raise_fault("oom")
            scored = regularizers.validated(model, ema)
            val = scores(scored, loaders, amp, len(classes))
            record = {"epoch": epoch + 1, "train_loss": train_loss, **val, "lr": lr,
                      "seconds": time.perf_counter() - start, "images_per_s": seen / train_seconds}
            metrics.writerow(record)
            mf.flush()
            print(epoch_line(record, ms), file=log, flush=True)
            chosen.offer(epoch + 1, val[config.objective], scored)
            done.append({k: record[k] for k in METRIC_FIELDS})
            at = Position(epoch + 1, 0, None, 0.0, 0, 0.0, at.evals + [record])
            curves.epoch(record)  # TensorBoard, if asked for (train/tracking.py)
            phase.now = "saving the resume state"
            saved_in = save_resume_state(config, model, optimizer, chosen, amp, done, loaders.generator, ema, at)
            print(f"Resume state saved in {saved_in:.2f} s", file=log, flush=True)
            uploads.check()  # the previous epoch's uploads, which overlapped this one
            uploads.submit(resume.RESUME, "metrics.csv", "log.txt")
            if not report({"event": "epoch", **record, "resume_save_s": saved_in,
                           "upload_s": uploads.took(), "stored": list(uploads.done)}):
                print(f"Stopped by the orchestrator after epoch {epoch + 1} (pruned)", file=log, flush=True)
                return "stopped"
        print(f"Value: {config.objective} {chosen.value:.4f} of epoch {chosen.epoch} ({config.value} "
              f"epoch); checkpoint.pth holds that epoch's weights", file=log, flush=True)
    save_checkpoint(chosen.state or regularizers.validated(model, ema).state_dict(), classes, config, fault)
    uploads.submit("checkpoint.pth", "metrics.csv", "log.txt")
    report({"event": "value", "value": chosen.value, "epoch": chosen.epoch})
    return "complete"


def make_optimizer(config: TrialConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD or AdamW over the model's parameter groups (head at lr, the rest at lr x backbone_lr_mult)."""
    groups = models.param_groups(model, config.scaled_lr, config.backbone_lr_mult)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.scaled_lr, momentum=config.momentum,
                               nesterov=config.nesterov, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.scaled_lr, weight_decay=config.weight_decay)


def train_step(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, amp: Amp,
               x: torch.Tensor, y: torch.Tensor, fault: str | None) -> torch.Tensor:
    """One optimizer step; returns the batch's loss."""
    if fault in ("oom", "host_oom", "hang"):
        raise_fault(fault)
    with amp.autocast():
        loss = criterion(model(x), y)
    amp.step(loss, optimizer)
    return loss


def epoch_line(record: dict[str, Any], ms: float) -> str:
    return (f"Epoch {record['epoch']} done: {record['seconds']:.1f} s, {ms:.1f} ms/step, "
            f"avg loss {record['train_loss']:.4f}, {record['images_per_s']:.0f} images/s, "
            f"val acc {record['val_acc']:.4f}, balanced {record['val_balanced_acc']:.4f}, "
            f"top5 {record['val_top5']:.4f}")


def save_checkpoint(state: dict[str, torch.Tensor], classes: list[str], config: TrialConfig,
                    fault: str | None = None) -> None:
    """checkpoint.pth (the orchestrator keeps it for the best trials only), written atomically."""
    path = Path(config.trial_dir) / "checkpoint.pth"
    try:
        with atomic_files.replacing(path) as tmp:
            if fault == "disk_full":
                raise_fault(fault)
            torch.save({"state_dict": state, "classes": classes, "model": config.model}, tmp)
    except OSError as exc:
        raise WorkerError(f"could not write checkpoint {path}: {exc.strerror or exc}") from None


def injected_fault(number: int) -> str | None:
    """Test hook: SWEEPER_INJECT_FAULT=kind:trial (e.g. oom:1) makes that trial fail that way
    (or, for `slow`, wait 2 s before each epoch after the first); read once per trial, so the
    training loop only compares a local."""
    kind, _, trial = os.environ.get("SWEEPER_INJECT_FAULT", "").partition(":")
    return kind if trial == str(number) else None


def raise_fault(kind: str) -> None:
    if kind == "oom":
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
    if kind == "host_oom":
        raise MemoryError()
    if kind == "hang":
        time.sleep(3600)
    if kind == "disk_full":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _pipe_reporter(proto, replies) -> Report:
    def report(event: dict[str, Any]) -> bool:
        proto.write(json.dumps(event) + "\n")
        proto.flush()
        if event["event"] != "epoch" and not event.get("decide"):
            return True
        return replies.readline().strip() == "continue"

    return report


def die_with_parent() -> None:
    """A worker whose orchestrator is gone (even by kill -9) must not run on as an orphan."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    def watch() -> None:  # elsewhere (and as a backstop): poll for re-parenting
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> int:
    die_with_parent()
    config = TrialConfig.from_json(Path(argv[0]).read_text())
    # Keep the real stdout for the protocol; anything else printed goes to stderr (the log).
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    report = _pipe_reporter(proto, sys.stdin)
    try:
        outcome = run_trial(config, report)
        report({"event": outcome})
        return 0
    except SweeperError as exc:
        report({"event": "fail", "reason": redact(str(exc))})
        return 1
    except Exception as exc:
        import traceback

        print(redact(traceback.format_exc()), file=sys.stderr, flush=True)
        reason = redact(f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(Exception):
            report({"event": "fail", "reason": reason.splitlines()[0][:500]})
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
