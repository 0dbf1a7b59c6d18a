"""Side-by-side throughput of the choices the worker makes, measured in one run.

1. Training step: fp32 NCHW vs bf16 autocast + channels_last (what `precision: auto` picks on
   CPUs with native bf16 and on CUDA).
2. Input pipeline: decoding every JPEG each epoch vs sweeper's decoded-image cache.

    python benchmarks/throughput.py [--data ../shared/data/caltech20] [--model resnet18] [--size 96]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import timm
import torch
from PIL import Image

from sweeper import data as datasets
from sweeper.augment import train_transform
from sweeper.testing import make_image_folder
from sweeper.trial_config import IMAGENET_MEAN, IMAGENET_STD
from sweeper.worker import pick_device


def train_rate(model_name: str, size: int, batch: int, steps: int, bf16: bool, channels_last: bool,
               device: torch.device) -> float:
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=20).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=fmt)
    y = torch.randint(0, 20, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def pipeline_rates(root: Path, size: int) -> tuple[float, float]:
    listing = datasets.list_folder(root, 0.2)
    transform = train_transform((), size, IMAGENET_MEAN, IMAGENET_STD)
    start = time.perf_counter()
    for path, _ in listing.train:  # what a plain ImageFolder does every epoch
        with Image.open(path) as im:
            transform(im.convert("RGB"))
    from_disk = len(listing.train) / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        d = datasets.load(datasets.prepare(str(root), None, 0.2, size, Path(tmp)))
        dataset = datasets.CachedImages(d["train_images"], d["train_labels"], transform)
        start = time.perf_counter()
        for i in range(len(dataset)):
            dataset[i]
        cached = len(dataset) / (time.perf_counter() - start)
    return from_disk, cached


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path("../shared/data/caltech20"))
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    device = pick_device()
    print(f"device={device} threads={torch.get_num_threads()} model={args.model} "
          f"size={args.size} batch={args.batch}")
    fp32 = train_rate(args.model, args.size, args.batch, args.steps, False, False, device)
    bf16 = train_rate(args.model, args.size, args.batch, args.steps, True, True, device)
    print(f"train fp32 NCHW:             {fp32:8.1f} images/s")
    print(f"train bf16 + channels_last:  {bf16:8.1f} images/s   ratio {bf16 / fp32:.2f}x")
    root = args.data
    if not root.is_dir():
        root = make_image_folder(Path(tempfile.mkdtemp()) / "generated", classes=5, per_class=60,
                                 size=300)
        print(f"({args.data} not found: generated images instead)")
    disk, cached = pipeline_rates(root, args.size)
    print(f"input decode every epoch:    {disk:8.1f} images/s")
    print(f"input from decoded cache:    {cached:8.1f} images/s   ratio {cached / disk:.2f}x")


if __name__ == "__main__":
    main()
