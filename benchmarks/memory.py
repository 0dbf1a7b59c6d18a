"""Memory of K workers reading one decoded dataset: sweeper's memory-mapped cache against a private
copy per process (what each worker held before: `torch.load` of the whole decoded list).

Each worker process maps (or copies) the cache and reads every image once, as an epoch does;
then, while all K are alive, each reports its proportional set size (PSS: a page shared by n
processes counts 1/n in each, so the sum over processes is the memory they really take). The
figure is PSS after reading minus PSS before, summed over the workers: the data's memory, apart
from each interpreter's own.

    python benchmarks/memory.py [--gb 2]      # a generated cache of about 2 GB (224 px images)
    python benchmarks/memory.py --quick       # 0.1 GB, seconds
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

IMAGE = (224, 298, 3)  # a 224 px crop's cache side, 4:3


def pss_mb() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no Pss in /proc/self/smaps_rollup (Linux only)")


def child(mode: str, path: str) -> None:
    """One worker: report data PSS after reading every image, once told to measure."""
    from sweeper.data import datasets

    before = pss_mb()
    if mode == "mmap":
        cache = datasets.load(Path(path))
        # read every byte, as augmenting each image does
        checksum = sum(int(split[i].max()) for split in (cache.train.images, cache.val.images)
                       for i in range(len(split)))
    else:
        pixels = np.fromfile(path, dtype=np.uint8)  # a private copy, as torch.load of the list was
        checksum = int(pixels[::4096].sum())
    print(f"ready {checksum}", flush=True)
    sys.stdin.readline()
    print(f"{pss_mb() - before:.1f}", flush=True)
    sys.stdin.readline()


def data_pss(mode: str, path: Path, k: int) -> float:
    procs = [subprocess.Popen([sys.executable, __file__, "--child", mode, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(k)]
    try:
        for p in procs:
            line = p.stdout.readline()
            if not line.startswith("ready"):
                raise SystemExit(f"worker failed: {line!r}")
        total = 0.0
        for p in procs:  # all k alive and holding their data: shared pages divide among them
            p.stdin.write("measure\n")
            p.stdin.flush()
        for p in procs:
            total += float(p.stdout.readline())
        return total
    finally:
        for p in procs:
            p.stdin.close()
            p.wait()


def generate(path: Path, gb: float) -> int:
    from sweeper.data import image_cache

    n = max(10, int(gb * 2**30 / np.prod(IMAGE)))
    base = np.random.default_rng(0).integers(0, 256, IMAGE, dtype=np.uint8)
    images = (np.roll(base, i, axis=1) for i in range(n))
    labels = [i % 10 for i in range(n)]
    image_cache.write(path, [str(c) for c in range(10)], images, labels, int(n * 0.8), {"builtin": "generated"})
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.quick:
        args.gb = 0.1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generated.imgcache"
        n = generate(path, args.gb)
        size_mb = path.stat().st_size / 2**20
        rows = {mode: (data_pss(mode, path, 1), data_pss(mode, path, args.workers)) for mode in ("mmap", "copy")}
    print(f"\ncache: {n} images of {IMAGE[0]}x{IMAGE[1]}, {size_mb:.0f} MB; data PSS summed over workers")
    print(f"{'cache as':<36} {'1 worker':>10} {f'{args.workers} workers':>10} {'ratio':>7}")
    for mode, label in (("mmap", "memory-mapped (sweeper)"), ("copy", "private copy per worker (before)")):
        one, many = rows[mode]
        print(f"{label:<36} {one:8.0f} MB {many:8.0f} MB {many / one:7.2f}")
    print(f"ratio: {args.workers} workers' data memory over one worker's (one shared copy: 1.00)")


if __name__ == "__main__":
    main()
