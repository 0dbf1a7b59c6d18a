"""Named augmentation policy sets -> per-image train/val transforms (PIL in, tensor out).

Operation names are mmcls's (the user's vocabulary, and what `best --export` writes), with
mmcls's magnitudes (see randaugment.py). Normalisation uses the model's own mean and std
(timm's pretrained config: CLIP and many ViTs do not use ImageNet's).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2

from sweeper.randaugment import RandAugment

# Images are cached with their shorter side at image_size / CROP_RATIO, then center-cropped.
CROP_RATIO = 0.875

Transform = Callable[[Image.Image], torch.Tensor]
Stats = Sequence[float]


def _to_tensor(mean: Stats, std: Stats) -> list:
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def eval_transform(image_size: int, mean: Stats, std: Stats) -> Transform:
    return v2.Compose([v2.Resize(int(image_size / CROP_RATIO)), v2.CenterCrop(image_size),
                       *_to_tensor(mean, std)])


def train_transform(
    operations: Sequence[str] | None,
    image_size: int,
    mean: Stats,
    std: Stats,
    num_ops: int = 2,
    magnitude: float = 9,
    magnitude_std: float = 0.5,
) -> Transform:
    """The train transform of a policy set.

    Args:
        operations: None for no augmentation (resize and center crop, as in validation);
            () for random-resized-crop and flip; mmcls op names for crop, flip and a
            RandAugment restricted to those operations.
    """
    if operations is None:
        return eval_transform(image_size, mean, std)
    steps: list = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    if operations:
        fill = tuple(round(255 * m) for m in mean)
        steps.append(RandAugment(operations, num_ops, magnitude, magnitude_std, fill))
    return v2.Compose(steps + _to_tensor(mean, std))
