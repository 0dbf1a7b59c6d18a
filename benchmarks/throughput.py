"""Training images/s of sweeper's worker against the plain way and against the model alone,
measured side by side in one run:

  (a) sweeper's worker: a real `sweeper run` of one trial; images/s of the epochs after the first;
  (b) the plain way, as pytorch/examples' ImageNet script trains: torchvision ImageFolder, PIL
      decode of every file every epoch, RandomResizedCrop + flip + ToTensor + Normalize, a
      DataLoader with its worker processes, fp32;
  (b') the same plain pipeline feeding sweeper's step (bf16 autocast + channels_last where the
      device has native bf16), which isolates what the input pipeline is worth;
  (c) the model alone on batches already in memory on the device, with sweeper's step: the
      ceiling for (a).

Same model, batch size, image size and augmentation everywhere. Targets: a/b >= 1.3, a/c >= 0.9.

    python benchmarks/throughput.py --data ../shared/data/caltech20 --model resnet18 --size 96
    python benchmarks/throughput.py --data DIR --model resnet50 --size 224 --batch 64   # on a GPU
    python benchmarks/throughput.py --quick      # tiny generated data and model, seconds
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
from torchvision import datasets as tv_datasets
from torchvision import transforms

from sweeper.data import datasets
from sweeper.spec.trial_config import IMAGENET_MEAN, IMAGENET_STD
from sweeper.testing import make_image_folder, tiny_space, write_space
from sweeper.train.device import Amp, pick_device, precision_here


def sweeper_rate(folder: Path, data: Path, args) -> float:
    """(a): images/s a real sweep's worker reports, epochs after the first."""
    folder.mkdir(parents=True)
    doc = tiny_space(data, study="bench", model={"name": args.model, "pretrained": False},
                     train={"epochs": args.epochs, "batch_size": args.batch, "schedule": "cosine",
                            "augment": "flip_crop", "precision": "auto", "lr": 0.01},
                     search={"n_trials": 1, "sampler": "random", "pruner": "none"}, space=None)
    workers = args.num_workers if args.num_workers == "auto" else int(args.num_workers)
    doc["data"].update(image_size=args.size, val_fraction=0.2, num_workers=workers)
    space = write_space(folder / "space.yaml", doc)
    done = subprocess.run([sys.executable, "-m", "sweeper", "run", "--space", str(space)], cwd=folder,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sweep failed:\n{done.stderr[-3000:]}")
    rows = list(csv.DictReader(open(folder / "trials/bench/0/metrics.csv")))
    return statistics.fmean(float(r["images_per_s"]) for r in (rows[1:] or rows))


def _model(name: str, classes: int, device: torch.device, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=classes).to(device)
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format).train()


def _timed_steps(model, batches, device, precision: str, channels_last: bool, warmup: int) -> float:
    """images/s over the batches after `warmup` (loading included, as a training loop sees it)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = Amp(precision, device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    seen, start = 0, None
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            seen, start = 0, time.perf_counter()
        x = x.to(device, non_blocking=True, memory_format=fmt)
        y = y.to(device, non_blocking=True)
        with amp.autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        amp.step(loss, opt)
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def plain_rate(data: Path, args, device: torch.device, sweeper_step: bool) -> float:
    """(b) / (b'): ImageFolder + PIL + DataLoader over the same train images, two epochs, the
    first one warm-up (loader workers starting, allocator)."""
    listing = datasets.list_folder(data, 0.2)
    train_files = {path for path, _ in listing.train}
    folder = tv_datasets.ImageFolder(str(data / "train") if (data / "train").is_dir() else str(data),
                                     transforms.Compose([
                                         transforms.RandomResizedCrop(args.size),
                                         transforms.RandomHorizontalFlip(),
                                         transforms.ToTensor(),
                                         transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    folder.samples = [s for s in folder.samples if s[0] in train_files]
    loader = torch.utils.data.DataLoader(folder, args.batch, shuffle=True, drop_last=True,
                                         num_workers=args.plain_workers, pin_memory=device.type == "cuda",
                                         persistent_workers=args.plain_workers > 0)
    precision = precision_here("auto", device) if sweeper_step else "fp32"
    model = _model(args.model, len(listing.classes), device, sweeper_step)

    def two_epochs():
        for _ in range(2):
            yield from loader

    return _timed_steps(model, two_epochs(), device, precision, sweeper_step, warmup=len(loader))


def model_rate(classes: int, steps: int, args, device: torch.device) -> float:
    """(c): the same step on one batch already on the device."""
    torch.backends.cudnn.benchmark = True  # as the worker trains (fixed input sizes)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, classes, (args.batch,), device=device)
    model = _model(args.model, classes, device, True)
    return _timed_steps(model, ((x, y) for _ in range(steps + 3)), device, precision_here("auto", device), True, warmup=3)


def loader_rate(sweep: Path, config_path: Path, device: torch.device) -> float:
    """A trial's own train loader alone (its config.json, its loader processes), images/s of the
    second epoch with each batch copied to the device: what bounds (a) when (a) is below (c).
    `sweep`: the folder its `sweeper run` ran in (the cache path is relative to it)."""
    from sweeper.cpu_share import CpuShare
    from sweeper.data.loading import make_loaders
    from sweeper.spec.trial_config import TrialConfig

    config = TrialConfig.from_json(config_path.read_text())
    config = dataclasses.replace(config, data_cache=str(sweep / config.data_cache))
    with CpuShare() as share:
        train = make_loaders(config, device, share).train
        for epoch in range(2):
            seen, start = 0, time.perf_counter()
            for x, y in train:
                x.to(device, non_blocking=True)
                seen += len(y)
            if device.type == "cuda":
                torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/caltech20"))
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="of the sweep (the first is warm-up)")
    parser.add_argument("--num-workers", default="auto", help="the sweep's data.num_workers (a)")
    parser.add_argument("--plain-workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="DataLoader processes of the plain way (pytorch/examples: 4)")
    parser.add_argument("--quick", action="store_true", help="tiny generated data and model")
    args = parser.parse_args()
    device = pick_device()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.quick:
            args.model, args.size, args.batch, args.epochs = "test_resnet", 32, 16, 2
            data = make_image_folder(root / "data", classes=3, per_class=40, size=64)
        elif not args.data.is_dir():
            raise SystemExit(f"{args.data} not found; pass --data PATH or --quick")
        else:
            data = args.data.resolve()
        a = sweeper_rate(root / "sweep", data, args)
        b = plain_rate(data, args, device, sweeper_step=False)
        b2 = plain_rate(data, args, device, sweeper_step=True)
        listing = datasets.list_folder(data, 0.2)
        c = model_rate(len(listing.classes), max(5, len(listing.train) // args.batch), args, device)
    print(f"\n{args.model} at {args.size} px, batch {args.batch} on {device} ({os.cpu_count()} cores), "
          f"sweeper's step in {precision_here('auto', device)}; training images/s")
    print(f"{'':<66} {'images/s':>9} {'a / this':>9}")
    for label, rate in ((f"(a)  sweeper's worker (real sweep, num_workers: {args.num_workers})", a),
                        (f"(b)  plain: ImageFolder + PIL + DataLoader({args.plain_workers} workers), fp32", b),
                        ("(b') plain pipeline feeding sweeper's step", b2),
                        ("(c)  model alone on batches already on the device", c)):
        print(f"{label:<66} {rate:9.1f} {a / rate:9.2f}")
    print(f"a/b = {a / b:.2f} (target >= 1.3), a/c = {a / c:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
