"""RandAugment cost: sweeper's mmcls-faithful operations against timm's, side by side in one run.

    .venv/bin/python benchmarks/randaugment.py [--size 110] [--images 200] [--rounds 5]

Both apply two of the thirteen operations at magnitude 9 (std 0.5) per image, on PIL images of
the size a 96 px trial crops from. Compare the result with the training rate of
benchmarks/throughput.py: augmentation must stay far faster than the model step.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
from PIL import Image
from timm.data.auto_augment import RandAugment as TimmRandAugment
from timm.data.auto_augment import rand_augment_ops

from sweeper.data.randaugment import RandAugment
from sweeper.spec.policies import OPERATIONS

TIMM_NAMES = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
              "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
              "TranslateYRel"]
FILL = (124, 116, 104)


def rate(transform, images: list[Image.Image], rounds: int) -> float:
    random.seed(0)
    start = time.perf_counter()
    for _ in range(rounds):
        for image in images:
            transform(image)
    return len(images) * rounds / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=110)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8))
              for _ in range(args.images)]
    timm_ops = rand_augment_ops(9, hparams={"magnitude_std": 0.5, "img_mean": FILL}, transforms=TIMM_NAMES)
    theirs = rate(TimmRandAugment(timm_ops, 2), images, args.rounds)
    ours = rate(RandAugment(list(OPERATIONS), 2, 9, 0.5, FILL), images, args.rounds)
    print(f"size={args.size} images={args.images} rounds={args.rounds}")
    print(f"timm RandAugment ops:          {theirs:8.0f} images/s")
    print(f"sweeper RandAugment (mmcls):   {ours:8.0f} images/s   ratio {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
