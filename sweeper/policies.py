"""Augmentation policy sets by name, in mmcls operation names (no torch import: spec uses it)."""

from __future__ import annotations

# mmcls RandAugment op name -> timm op names
OPERATIONS: dict[str, tuple[str, ...]] = {
    "AutoContrast": ("AutoContrast",),
    "Equalize": ("Equalize",),
    "Invert": ("Invert",),
    "Rotate": ("Rotate",),
    "Posterize": ("Posterize",),
    "Solarize": ("Solarize",),
    "SolarizeAdd": ("SolarizeAdd",),
    "ColorTransform": ("Color",),
    "Contrast": ("Contrast",),
    "Brightness": ("Brightness",),
    "Sharpness": ("Sharpness",),
    "Shear": ("ShearX", "ShearY"),
    "Translate": ("TranslateXRel", "TranslateYRel"),
}

# Built-in policy sets: `none` and `flip_crop` use no RandAugment; the rest list its operations.
BUILTIN_POLICIES: dict[str, tuple[str, ...] | None] = {
    "none": None,
    "flip_crop": (),
    "swin_randaug": tuple(OPERATIONS),
}
