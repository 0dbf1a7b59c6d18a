"""A trial's data loaders: the mapped cache -> augmented uint8 batches -> normalised on the device.

`num_workers: auto` (the default) gives a GPU worker its share of the host's cores as loader
processes (the cores divided by the sweeper workers registered on the host, every orchestrator's,
cpu_share.py), so augmentation keeps the accelerator busy; on a CPU the cores already train
(each worker takes its share of threads), and loader processes would only take them away from
the step, so augmentation runs in the worker between steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sweeper.cpu_share import CpuShare
from sweeper.data import datasets
from sweeper.data.augment import Normalize, eval_transform, train_transform
from sweeper.spec.trial_config import TrialConfig

AUTO = "auto"
MAX_AUTO_WORKERS = 8  # beyond this, loader processes mostly add start-up time and memory


def loader_workers(setting: int | str, device: torch.device, cores: int, host_workers: int) -> int:
    """The DataLoader's num_workers for `data.num_workers` on this device, with `host_workers`
    sweeper workers sharing the host's `cores`."""
    if setting != AUTO:
        return int(setting)
    if device.type == "cpu":
        return 0
    return max(1, min(MAX_AUTO_WORKERS, cores // max(1, host_workers)))


def drops_last_batch(train_images: int, batch_size: int) -> bool:
    """The last partial batch is dropped (a batch of one breaks BatchNorm), unless it is the only one."""
    return train_images > batch_size


def iters_per_epoch(train_images: int, batch_size: int) -> int:
    """len() of the worker's train loader, without building one (exports need it)."""
    if drops_last_batch(train_images, batch_size):
        return train_images // batch_size
    return -(-train_images // batch_size)


@dataclass
class Loaders:
    classes: list[str]
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    normalize: Normalize  # uint8 batch on the host -> the model's input on the device
    num_workers: int
    generator: torch.Generator  # orders the train data; saved and restored with a resume state


def make_loaders(config: TrialConfig, device: torch.device, share: CpuShare) -> Loaders:
    cache = datasets.load(config.data_cache)
    train_set = datasets.CachedImages(cache.train, train_transform(
        config.augment_ops, config.image_size, config.mean, config.num_ops, config.magnitude,
        config.magnitude_std))
    val_set = datasets.CachedImages(cache.val, eval_transform(config.image_size))
    workers = loader_workers(config.num_workers, device, share.cores, share.workers())
    common = dict(num_workers=workers, pin_memory=device.type == "cuda",
                  persistent_workers=workers > 0)  # no re-fork of loader processes each epoch
    generator = torch.Generator().manual_seed(config.seed)
    train = torch.utils.data.DataLoader(
        train_set, config.batch_size, shuffle=True, generator=generator,
        drop_last=drops_last_batch(len(train_set), config.batch_size), **common)
    val = torch.utils.data.DataLoader(val_set, max(config.batch_size, 64), **common)
    return Loaders(cache.classes, train, val, Normalize(config.mean, config.std, device), workers, generator)
