"""A trial's data loaders: the mapped cache -> augmented uint8 batches -> normalised on the device.

`num_workers: auto` (the default) gives a GPU worker its share of the host's cores as loader
processes: the cores divided by the slots its orchestrator runs on this host (SWEEPER_HOST_SLOTS,
so trials that start together get equal shares), or by the sweeper workers registered on the
host (cpu_share.py, every orchestrator's) when those are more. On a CPU the cores already train
(each worker takes its share of threads), and loader processes would only take them away from
the step, so augmentation runs in the worker between steps.

Loader processes hand batches over through /dev/shm; Docker gives containers 64 MB of it, where
eight loaders of large batches die with a bus error. The loaders are cut to what fits.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import torch
from PIL import Image

from sweeper.cpu_share import CpuShare
from sweeper.data import datasets, image_cache
from sweeper.data.augment import Normalize, eval_transform, train_transform
from sweeper.spec.trial_config import TrialConfig

AUTO = "auto"
MAX_AUTO_WORKERS = 8  # beyond this, loader processes mostly add start-up time and memory
HOST_SLOTS_ENV = "SWEEPER_HOST_SLOTS"
PREFETCH = 2  # DataLoader's prefetch_factor: batches each loader process holds ready
SHM = "/dev/shm"


def loader_workers(setting: int | str, device: torch.device, cores: int, host_workers: int) -> int:
    """The DataLoader's num_workers for `data.num_workers` on this device, with `host_workers`
    sweeper workers sharing the host's `cores`."""
    if setting != AUTO:
        return int(setting)
    if device.type == "cpu":
        return 0
    return max(1, min(MAX_AUTO_WORKERS, cores // max(1, host_workers)))


def shm_cap(wanted: int, free_bytes: int | None, batch_bytes: int, host_workers: int = 1) -> int:
    """Loader processes whose ready batches fit in this worker's share (of `host_workers`) of
    half of /dev/shm's free space."""
    if wanted == 0 or free_bytes is None:
        return wanted
    return min(wanted, int(free_bytes / 2 / host_workers // (PREFETCH * batch_bytes)))


def shm_free() -> int | None:
    try:
        return shutil.disk_usage(SHM).free
    except OSError:  # no /dev/shm (not Linux): nothing to check
        return None


def drops_last_batch(train_images: int, batch_size: int) -> bool:
    """The last partial batch is dropped (a batch of one breaks BatchNorm), unless it is the only one."""
    return train_images > batch_size


def iters_per_epoch(train_images: int, batch_size: int) -> int:
    """len() of the worker's train loader, without building one (exports need it)."""
    if drops_last_batch(train_images, batch_size):
        return train_images // batch_size
    return -(-train_images // batch_size)


class CachedImages(torch.utils.data.Dataset):
    """A split of the mapped cache, transformed on access (to a uint8 CHW tensor)."""

    def __init__(self, split: image_cache.Split, transform):
        self.images, self.labels, self.transform = split.images, split.labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class ShuffledBatches(torch.utils.data.Sampler):
    """RandomSampler + BatchSampler in one that can start an epoch part-way: a trial resumed
    after a mid-epoch validation skips the batches it trained without loading them (loading
    would draw augmentation randomness). One permutation per epoch from the loader's generator."""

    def __init__(self, n: int, batch_size: int, drop_last: bool, generator: torch.Generator):
        self.n, self.batch_size, self.drop_last, self.generator = n, batch_size, drop_last, generator
        self.skip = 0  # batches to skip at the start of the next epoch only

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).tolist()
        skip, self.skip = self.skip, 0
        for i in range(skip, len(self)):
            yield order[i * self.batch_size:(i + 1) * self.batch_size]


@dataclass
class Loaders:
    classes: list[str]
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    test: torch.utils.data.DataLoader | None  # None without a test split
    normalize: Normalize  # uint8 batch on the host -> the model's input on the device
    num_workers: int
    generator: torch.Generator  # orders the train data; saved and restored with a resume state
    note: str | None = None  # why there are fewer loader processes than asked for

    @property
    def batches(self) -> ShuffledBatches:
        return self.train.batch_sampler


def make_loaders(config: TrialConfig, device: torch.device, share: CpuShare) -> Loaders:
    cache = datasets.load(config.data_cache)
    train_set = CachedImages(cache.train, train_transform(
        config.augment_ops, config.image_size, config.mean, config.num_ops, config.magnitude,
        config.magnitude_std))
    val_set = CachedImages(cache.val, eval_transform(config.image_size))
    # the test split is loaded only to record curves (benchmarks/curves.py); a sweep scores its
    # answer on it once, at the end (analyze/test_score.py)
    test_set = (CachedImages(cache.test, eval_transform(config.image_size))
                if config.record_test and len(cache.test.labels) else None)
    host_workers = max(share.workers(), int(os.environ.get(HOST_SLOTS_ENV, "1")))
    wanted = loader_workers(config.num_workers, device, share.cores, host_workers)
    # uint8 batches: the larger of the train and val loaders' (see below)
    batch_bytes = max(config.batch_size, 64) * 3 * config.image_size ** 2
    free = shm_free()
    workers = shm_cap(wanted, free, batch_bytes, host_workers)
    note = None
    if workers < wanted:
        note = (f"{SHM} has {free / 2**20:.0f} MiB free: {workers} loader process(es) instead of {wanted} "
                f"(each holds {PREFETCH} batches of {batch_bytes / 2**20:.1f} MiB there); "
                "`docker run --shm-size=8g` lifts this")
    common = dict(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                  prefetch_factor=PREFETCH if workers else None)
    # both loaders keep their processes: no re-fork of a process holding the model (and a CUDA
    # context) each epoch; the idle val ones cost ~14 MiB each, the rest is shared copy-on-write
    # (benchmarks/README.md, "Fork servers and loader processes")
    generator = torch.Generator().manual_seed(config.seed)
    batches = ShuffledBatches(len(train_set), config.batch_size,
                              drops_last_batch(len(train_set), config.batch_size), generator)
    train = torch.utils.data.DataLoader(train_set, batch_sampler=batches, generator=generator, **common)
    val = torch.utils.data.DataLoader(val_set, max(config.batch_size, 64), **common)
    test = None if test_set is None else torch.utils.data.DataLoader(test_set, max(config.batch_size, 64), **common)
    return Loaders(cache.classes, train, val, test, Normalize(config.mean, config.std, device), workers,
                   generator, note)
