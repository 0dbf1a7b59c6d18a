"""What storing a trial's resume state in the artifact store costs per epoch, and whether it
stalls training. In one run, for a resnet18 and a resnet50 state (model + SGD momentum, as a
worker saves after each epoch):

1. saving it to the trial's folder (`resume_save_s` in a sweep);
2. uploading it (`upload_s`): to a folder store (a local path here, standing in for NFS) and to
   an S3-compatible server (moto's standalone server, started here on loopback: real S3 or
   MinIO adds network time, which the overlap hides the same way);
3. the same training steps alone, then while the upload runs in the worker's background thread
   (sweeper's `Uploads`, as in a sweep): their ratio is what the upload costs the training loop.

    python benchmarks/artifacts.py            # resnet18 and resnet50, 96 px, batch 32, 10 steps
    python benchmarks/artifacts.py --quick    # test_resnet, 32 px, 3 steps
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import timm
import torch

from sweeper import artifacts
from sweeper.testing import start_s3_server
from sweeper.train import resume
from sweeper.train.device import Amp, precision_here
from sweeper.train.uploads import Uploads


def start_s3() -> tuple[subprocess.Popen, str]:
    proc, url = start_s3_server()
    os.environ.update({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    return proc, "s3://bench/artifacts"


def steps_seconds(model, optimizer, amp: Amp, x, y, steps: int) -> float:
    criterion = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(steps):
        with amp.autocast():
            loss = criterion(model(x), y)
        amp.step(loss, optimizer)
    return time.perf_counter() - start


def measure(name: str, size: int, batch: int, steps: int, stores: dict[str, str], work: Path) -> dict:
    model = timm.create_model(name, num_classes=20).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    device = torch.device("cpu")
    amp = Amp(precision_here("auto", device), device)
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 20, (batch,))
    steps_seconds(model, optimizer, amp, x, y, 2)  # warm-up; creates the momentum buffers
    folder = work / name
    folder.mkdir()
    saving = time.perf_counter()
    resume.save(folder, {"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    row = {"model": name, "state_mb": (folder / resume.RESUME).stat().st_size / 2**20,
           "save_s": time.perf_counter() - saving}
    alone = [steps_seconds(model, optimizer, amp, x, y, steps) for _ in range(3)]
    row["steps_s"] = statistics.median(alone)
    for kind, url in stores.items():
        store = artifacts.open_store(url)
        ident = artifacts.artifact_id(artifacts.new_key(), resume.RESUME)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            store.put(ident, folder / resume.RESUME)
            times.append(time.perf_counter() - start)
        row[f"upload_{kind}_s"] = statistics.median(times)
        beside = []
        for _ in range(3):  # the worker's way: hand the file over, train on, wait at the end only
            uploads = Uploads(url, artifacts.new_key(), folder)
            uploads.submit(resume.RESUME)
            beside.append(steps_seconds(model, optimizer, amp, x, y, steps))
            uploads.drain()
        row[f"steps_with_{kind}_s"] = statistics.median(beside)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    models, size, batch, steps = (["test_resnet"], 32, 8, 3) if args.quick else (["resnet18", "resnet50"], 96, 32, 10)
    server, s3_url = start_s3()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "folder-store").mkdir()
            stores = {"folder": str(work / "folder-store"), "s3": s3_url}
            rows = [measure(m, size, batch, steps, stores, work) for m in models]
    finally:
        server.terminate()
    print(f"{steps} training steps at {size} px, batch {batch}, on {os.cpu_count()} CPU cores; medians of 3")
    print(f"{'model':<12} {'state':>9} {'save':>7} {'upload folder':>14} {'upload s3':>10} "
          f"{'steps alone':>12} {'+ folder upload':>16} {'+ s3 upload':>12}")
    for r in rows:
        print(f"{r['model']:<12} {r['state_mb']:6.1f} MB {r['save_s']:6.2f}s {r['upload_folder_s']:13.2f}s "
              f"{r['upload_s3_s']:9.2f}s {r['steps_s']:11.2f}s "
              f"{r['steps_with_folder_s'] / r['steps_s']:15.2f}x {r['steps_with_s3_s'] / r['steps_s']:11.2f}x")
    print("ratios: the steps' time with the upload running beside them / alone (1.00: no stall)")


if __name__ == "__main__":
    main()
