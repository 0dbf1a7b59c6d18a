"""Named augmentation policy sets -> per-image train/val transforms (PIL in, tensor out).

Operation names are mmcls's (the user's vocabulary, and what `best --export` writes); they map
onto timm's RandAugment operations, which cover all of them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image
from timm.data.auto_augment import RandAugment, rand_augment_ops
from torchvision.transforms import v2

from sweeper.policies import OPERATIONS

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# Images are cached with their shorter side at image_size / CROP_RATIO, then center-cropped.
CROP_RATIO = 0.875

Transform = Callable[[Image.Image], torch.Tensor]


def _to_tensor() -> list:
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]


def eval_transform(image_size: int) -> Transform:
    return v2.Compose([v2.Resize(int(image_size / CROP_RATIO)), v2.CenterCrop(image_size), *_to_tensor()])


def train_transform(
    policy: str,
    operations: Sequence[str] | None,
    image_size: int,
    num_ops: int = 2,
    magnitude: float = 9,
    magnitude_std: float = 0.5,
) -> Transform:
    """The train transform of a policy set.

    Args:
        policy: the policy's name (for messages only).
        operations: None for no augmentation (resize and center crop, as in validation);
            () for random-resized-crop and flip; mmcls op names for crop, flip and a
            RandAugment restricted to those operations.
    """
    if operations is None:
        return eval_transform(image_size)
    steps: list = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    if operations:
        timm_names = [t for op in operations for t in OPERATIONS[op]]
        hparams = {"magnitude_std": magnitude_std, "img_mean": tuple(round(255 * m) for m in MEAN)}
        ops = rand_augment_ops(magnitude=magnitude, hparams=hparams, transforms=timm_names)
        steps.append(RandAugment(ops, num_layers=num_ops))
    return v2.Compose(steps + _to_tensor())
