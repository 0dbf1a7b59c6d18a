"""Augmentation policy sets by name, in mmcls operation names (no torch import: spec uses it).

`OPERATIONS` is mmcls's `rand_increasing_policies` (configs/_base_/datasets/pipelines/rand_aug.py,
the same in mmpretrain 1.x): the one table that both the worker's RandAugment and the exported
configs read, so a trial and its export augment alike. Shear and Translate are two policies
each (horizontal and vertical), as in mmcls.
"""

from __future__ import annotations

from typing import Any

OPERATIONS: dict[str, tuple[dict[str, Any], ...]] = {
    "AutoContrast": ({"type": "AutoContrast"},),
    "Equalize": ({"type": "Equalize"},),
    "Invert": ({"type": "Invert"},),
    "Rotate": ({"type": "Rotate", "magnitude_key": "angle", "magnitude_range": (0, 30)},),
    "Posterize": ({"type": "Posterize", "magnitude_key": "bits", "magnitude_range": (4, 0)},),
    "Solarize": ({"type": "Solarize", "magnitude_key": "thr", "magnitude_range": (256, 0)},),
    "SolarizeAdd": ({"type": "SolarizeAdd", "magnitude_key": "magnitude", "magnitude_range": (0, 110)},),
    "ColorTransform": ({"type": "ColorTransform", "magnitude_key": "magnitude", "magnitude_range": (0, 0.9)},),
    "Contrast": ({"type": "Contrast", "magnitude_key": "magnitude", "magnitude_range": (0, 0.9)},),
    "Brightness": ({"type": "Brightness", "magnitude_key": "magnitude", "magnitude_range": (0, 0.9)},),
    "Sharpness": ({"type": "Sharpness", "magnitude_key": "magnitude", "magnitude_range": (0, 0.9)},),
    "Shear": tuple({"type": "Shear", "magnitude_key": "magnitude", "magnitude_range": (0, 0.3),
                    "direction": d} for d in ("horizontal", "vertical")),
    "Translate": tuple({"type": "Translate", "magnitude_key": "magnitude", "magnitude_range": (0, 0.45),
                        "direction": d} for d in ("horizontal", "vertical")),
}
TOTAL_LEVEL = 10  # magnitude levels run 0..10, as in mmcls's and timm's RandAugment configs
# Rotate, Shear and Translate fill with the dataset mean and resample bicubically; the exports
# pass the same through RandAugment's `hparams` (mmcls's defaults would be 128 and nearest).
GEOMETRIC_INTERPOLATION = "bicubic"

# Built-in policy sets: `none` and `flip_crop` use no RandAugment; the rest list its operations.
BUILTIN_POLICIES: dict[str, tuple[str, ...] | None] = {
    "none": None,
    "flip_crop": (),
    "swin_randaug": tuple(OPERATIONS),
}


def policies_for(operations: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    """mmcls RandAugment policy dicts for a list of operation names."""
    return [dict(p) for op in operations for p in OPERATIONS[op]]
