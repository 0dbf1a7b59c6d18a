"""RandAugment with mmcls's meaning, on PIL images.

mmcls 0.x `RandAugment` (and mmpretrain 1.x, the same formula): per image, draw `num_policies`
policies with replacement; for each, the magnitude level is Gauss(magnitude_level,
magnitude_std) clipped to [0, total_level], and the policy's argument is
    level / total_level x (val2 - val1) + val1      over its magnitude_range (val1, val2).
Each operation then applies with probability `prob` (mmcls: 0.5), and the signed ones
(Rotate, Shear, Translate, and the enhancements) are negated with probability 0.5. The
enhancements take factor = 1 + magnitude, Posterize rounds its bits up, SolarizeAdd adds to
pixels below 128, and Translate moves by magnitude x width (or height) pixels.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from sweeper.spec.policies import OPERATIONS, TOTAL_LEVEL

Fill = tuple[int, int, int]
SIGNED = {"Rotate", "Shear", "Translate", "ColorTransform", "Contrast", "Brightness", "Sharpness"}
SOLARIZE_ADD_THRESHOLD = 128


def argument(policy: dict[str, Any], level: float) -> float | None:
    """The argument mmcls computes for `policy` at magnitude `level` (None: it takes none)."""
    if "magnitude_range" not in policy:
        return None
    val1, val2 = policy["magnitude_range"]
    value = level / TOTAL_LEVEL * (val2 - val1) + val1
    return math.ceil(value) if policy["type"] == "Posterize" else value


def _solarize_add(img: Image.Image, magnitude: float) -> Image.Image:
    a = np.asarray(img)
    added = np.minimum(a + magnitude, 255)  # float, truncated back to uint8 as mmcls does
    return Image.fromarray(np.where(a < SOLARIZE_ADD_THRESHOLD, added, a).astype(np.uint8))


def _posterize(img: Image.Image, bits: int) -> Image.Image:
    shift = 8 - bits  # mmcv.posterize; PIL refuses 0 bits, which mmcls reaches at level 10
    return Image.fromarray((np.asarray(img) >> shift) << shift)


def _affine(img: Image.Image, matrix: tuple[float, ...], fill: Fill) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, matrix, Image.Resampling.BICUBIC,
                         fillcolor=fill)


def _shear(img: Image.Image, m: float, direction: str, fill: Fill) -> Image.Image:
    return _affine(img, (1, m, 0, 0, 1, 0) if direction == "horizontal" else (1, 0, 0, m, 1, 0), fill)


def _translate(img: Image.Image, m: float, direction: str, fill: Fill) -> Image.Image:
    if direction == "horizontal":
        return _affine(img, (1, 0, -m * img.width, 0, 1, 0), fill)
    return _affine(img, (1, 0, 0, 0, 1, -m * img.height), fill)


def apply(policy: dict[str, Any], img: Image.Image, arg: float | None, fill: Fill) -> Image.Image:
    """One operation with its (already signed) argument, as mmcv's image functions do it."""
    op = policy["type"]
    ops: dict[str, Callable[[], Image.Image]] = {
        "AutoContrast": lambda: ImageOps.autocontrast(img),
        "Equalize": lambda: ImageOps.equalize(img),
        "Invert": lambda: ImageOps.invert(img),
        "Rotate": lambda: img.rotate(arg, Image.Resampling.BICUBIC, fillcolor=fill),
        "Posterize": lambda: _posterize(img, int(arg)),
        "Solarize": lambda: ImageOps.solarize(img, arg),
        "SolarizeAdd": lambda: _solarize_add(img, arg),
        "ColorTransform": lambda: ImageEnhance.Color(img).enhance(1 + arg),
        "Contrast": lambda: ImageEnhance.Contrast(img).enhance(1 + arg),
        "Brightness": lambda: ImageEnhance.Brightness(img).enhance(1 + arg),
        "Sharpness": lambda: ImageEnhance.Sharpness(img).enhance(1 + arg),
        "Shear": lambda: _shear(img, arg, policy.get("direction", "horizontal"), fill),
        "Translate": lambda: _translate(img, arg, policy.get("direction", "horizontal"), fill),
    }
    return ops[op]()


class RandAugment:
    """mmcls's RandAugment restricted to `operations` (mmcls op names)."""

    def __init__(self, operations: Sequence[str], num_policies: int = 2, magnitude_level: float = 9,
                 magnitude_std: float = 0.5, fill: Fill = (128, 128, 128), prob: float = 0.5):
        self.policies = [p for op in operations for p in OPERATIONS[op]]
        self.num_policies, self.magnitude_level = num_policies, magnitude_level
        self.magnitude_std, self.fill, self.prob = magnitude_std, fill, prob

    def level(self) -> float:
        if self.magnitude_std > 0:
            return min(TOTAL_LEVEL, max(0.0, random.gauss(self.magnitude_level, self.magnitude_std)))
        return self.magnitude_level

    def __call__(self, img: Image.Image) -> Image.Image:
        for policy in random.choices(self.policies, k=self.num_policies):
            arg = argument(policy, self.level())
            if random.random() > self.prob:
                continue
            if policy["type"] in SIGNED and random.random() < 0.5:
                arg = -arg
            img = apply(policy, img, arg, self.fill)
        return img
