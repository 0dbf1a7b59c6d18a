"""Named augmentation policy sets -> per-image train/val transforms (PIL in, uint8 tensor out).

Operation names are mmcls's (the user's vocabulary, and what `best --export` writes), with
mmcls's magnitudes (see randaugment.py). Batches stay uint8 until they reach the device, where
`Normalize` scales them with the model's own mean and std (timm's pretrained config: CLIP and
many ViTs do not use ImageNet's): a quarter of the bytes through the loader, pinned memory and
the host-to-device copy, and the arithmetic runs on the accelerator.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2

from sweeper.data.datasets import CROP_RATIO
from sweeper.data.randaugment import RandAugment

Transform = Callable[[Image.Image], torch.Tensor]
Stats = Sequence[float]


class Normalize:
    """uint8 NCHW batch -> float32 channels_last on `device`, scaled as torchvision's
    ToDtype(scale=True) + Normalize(mean, std) would (the same operations, in the same order)."""

    def __init__(self, mean: Stats, std: Stats, device: torch.device):
        self.device = device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        return x.float().mul_(1.0 / 255).sub_(self.mean).div_(self.std)


def eval_transform(image_size: int) -> Transform:
    return v2.Compose([v2.Resize(int(image_size / CROP_RATIO)), v2.CenterCrop(image_size),
                       v2.PILToTensor()])


def train_transform(
    operations: Sequence[str] | None,
    image_size: int,
    mean: Stats,
    num_ops: int = 2,
    magnitude: float = 9,
    magnitude_std: float = 0.5,
) -> Transform:
    """The train transform of a policy set.

    Args:
        operations: None for no augmentation (resize and center crop, as in validation);
            () for random-resized-crop and flip; mmcls op names for crop, flip and a
            RandAugment restricted to those operations.
        mean: the model's mean, which RandAugment fills uncovered pixels with (as mmcls's
            pad_val does).
    """
    if operations is None:
        return eval_transform(image_size)
    steps: list = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    if operations:
        fill = tuple(round(255 * m) for m in mean)
        steps.append(RandAugment(operations, num_ops, magnitude, magnitude_std, fill))
    return v2.Compose(steps + [v2.PILToTensor()])
