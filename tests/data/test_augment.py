"""Augmentation: policy sets give tensors of the configured size, and RandAugment's operations
take the arguments mmcls 0.x computes.

Expected arguments are worked out by hand from mmcls's `rand_increasing_policies` ranges
(configs/_base_/datasets/pipelines/rand_aug.py) and its RandAugment formula
    argument = level / 10 x (val2 - val1) + val1,
with mmcls's per-operation rules: Posterize rounds bits up (ceil), the enhancements use
factor 1 + magnitude, SolarizeAdd adds below 128, Translate moves magnitude x width pixels, and
the signed operations may be negated. Reference images are made with PIL directly.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from sweeper.data.augment import Normalize, eval_transform, train_transform
from sweeper.data.randaugment import RandAugment
from sweeper.spec.policies import BUILTIN_POLICIES

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FILL = (124, 116, 104)


def _image(h: int = 40, w: int = 60) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_every_builtin_policy_gives_the_image_size():
    for name, ops in BUILTIN_POLICIES.items():
        out = train_transform(ops, 24, MEAN)(_image())
        assert out.shape == (3, 24, 24) and out.dtype == torch.uint8, name


def test_none_is_deterministic_and_randaugment_is_not():
    image = _image()
    none = train_transform(None, 24, MEAN)
    assert torch.equal(none(image), none(image))
    assert torch.equal(none(image), eval_transform(24)(image))
    torch.manual_seed(0)
    rand = train_transform(BUILTIN_POLICIES["swin_randaug"], 24, MEAN, num_ops=2, magnitude=9)
    outs = [rand(image) for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_normalisation_uses_the_given_mean_and_std():
    grey = Image.new("RGB", (32, 32), (128, 128, 128))
    batch = eval_transform(16)(grey)[None]
    out = Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), torch.device("cpu"))(batch)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, torch.full_like(out, (128 / 255 - 0.5) / 0.5), atol=1e-6)


def test_normalising_on_the_device_equals_torchvisions_float_pipeline():
    """Normalize after the uint8 batch reaches the device gives torchvision's
    ToDtype(scale=True) + Normalize values exactly."""
    from torchvision.transforms import v2

    image = _image()
    reference = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(list(MEAN), list(STD))])(image)
    ours = Normalize(MEAN, STD, torch.device("cpu"))(v2.PILToTensor()(image)[None])[0]
    assert torch.equal(ours, reference)


def _affine(img, matrix):
    return img.transform(img.size, Image.Transform.AFFINE, matrix, Image.Resampling.BICUBIC,
                         fillcolor=FILL)


def _solarize_add(img, add):
    a = np.asarray(img)
    return Image.fromarray(np.where(a < 128, np.minimum(a + add, 255), a).astype(np.uint8))


# operation -> (reference(img, signed argument), {level: mmcls argument})
W, H = 60, 40
REFERENCE = {
    "AutoContrast": (lambda im, a: ImageOps.autocontrast(im), {0: None, 5: None, 9: None, 10: None}),
    "Equalize": (lambda im, a: ImageOps.equalize(im), {0: None, 5: None, 9: None, 10: None}),
    "Invert": (lambda im, a: ImageOps.invert(im), {0: None, 5: None, 9: None, 10: None}),
    # range (0, 30): 0, 15, 27, 30 degrees
    "Rotate": (lambda im, a: im.rotate(a, Image.Resampling.BICUBIC, fillcolor=FILL),
               {0: 0.0, 5: 15.0, 9: 27.0, 10: 30.0}),
    # range (4, 0), rounded up: 4, ceil(2) = 2, ceil(0.4) = 1, 0
    # (mmcv.posterize: (img >> (8 - bits)) << (8 - bits))
    "Posterize": (lambda im, a: Image.fromarray(np.asarray(im) >> (8 - a) << (8 - a)),
                  {0: 4, 5: 2, 9: 1, 10: 0}),
    # range (256, 0): 256, 128, 25.6, 0
    "Solarize": (lambda im, a: ImageOps.solarize(im, a), {0: 256.0, 5: 128.0, 9: 25.6, 10: 0.0}),
    # range (0, 110): 0, 55, 99, 110
    "SolarizeAdd": (_solarize_add, {0: 0.0, 5: 55.0, 9: 99.0, 10: 110.0}),
    # range (0, 0.9), factor 1 +- magnitude: 0, 0.45, 0.81, 0.9
    "ColorTransform": (lambda im, a: ImageEnhance.Color(im).enhance(1 + a), {0: 0.0, 5: 0.45, 9: 0.81, 10: 0.9}),
    "Contrast": (lambda im, a: ImageEnhance.Contrast(im).enhance(1 + a), {0: 0.0, 5: 0.45, 9: 0.81, 10: 0.9}),
    "Brightness": (lambda im, a: ImageEnhance.Brightness(im).enhance(1 + a), {0: 0.0, 5: 0.45, 9: 0.81, 10: 0.9}),
    "Sharpness": (lambda im, a: ImageEnhance.Sharpness(im).enhance(1 + a), {0: 0.0, 5: 0.45, 9: 0.81, 10: 0.9}),
    # range (0, 0.3), horizontal and vertical: 0, 0.15, 0.27, 0.3
    "Shear": (lambda im, a: [_affine(im, (1, a, 0, 0, 1, 0)), _affine(im, (1, 0, 0, a, 1, 0))],
              {0: 0.0, 5: 0.15, 9: 0.27, 10: 0.3}),
    # range (0, 0.45) of the width / height in pixels: 0, 0.225, 0.405, 0.45
    "Translate": (lambda im, a: [_affine(im, (1, 0, -a * W, 0, 1, 0)), _affine(im, (1, 0, 0, 0, 1, -a * H))],
                  {0: 0.0, 5: 0.225, 9: 0.405, 10: 0.45}),
}
SIGNED = {"Rotate", "ColorTransform", "Contrast", "Brightness", "Sharpness", "Shear", "Translate"}


@pytest.mark.parametrize("level", [0, 5, 9, 10])
@pytest.mark.parametrize("op", list(REFERENCE))
def test_each_operation_applies_mmcls_argument(op, level):
    reference, arguments = REFERENCE[op]
    arg = arguments[level]
    signs = (1, -1) if op in SIGNED else (1,)
    image = _image(H, W)
    expected = []
    for sign in signs:
        out = reference(image, None if arg is None else sign * arg)
        expected += out if isinstance(out, list) else [out]
    augment = RandAugment([op], num_policies=1, magnitude_level=level, magnitude_std=0,
                          fill=FILL, prob=1.0)
    random.seed(level)
    seen = set()
    for _ in range(12):  # both signs and both directions show up
        got = np.asarray(augment(image))
        matches = [i for i, e in enumerate(expected) if np.array_equal(got, np.asarray(e))]
        assert matches, f"{op} at level {level}: no mmcls argument ({arg}) gives this image"
        seen.update(matches)
    assert len(seen) == len(expected) or (arg == 0 and op != "Posterize"), (op, level, seen)


def test_posterize_at_magnitude_9_leaves_two_values_per_channel():
    augment = RandAugment(["Posterize"], num_policies=1, magnitude_level=9, magnitude_std=0, prob=1.0)
    out = np.asarray(augment(_image()))
    for c in range(3):
        assert len(np.unique(out[:, :, c])) <= 2


def test_solarize_at_magnitude_9_inverts_everything_above_26():
    augment = RandAugment(["Solarize"], num_policies=1, magnitude_level=9, magnitude_std=0, prob=1.0)
    image = _image()
    a, out = np.asarray(image).astype(int), np.asarray(augment(image)).astype(int)
    assert np.array_equal(out[a >= 26], 255 - a[a >= 26]) and np.array_equal(out[a < 25], a[a < 25])


def test_magnitude_noise_is_clipped_to_the_level_range():
    # level 10 with noise: Gauss draws above 10 are clipped to 10 (posterize to 0 bits: black)
    augment = RandAugment(["Posterize"], num_policies=1, magnitude_level=10, magnitude_std=0.5, prob=1.0)
    random.seed(0)
    outs = [np.asarray(augment(_image())) for _ in range(20)]
    assert any(o.max() == 0 for o in outs) and any(o.max() > 0 for o in outs)


def test_operations_apply_with_mmcls_probability_one_half():
    augment = RandAugment(["Invert"], num_policies=1, magnitude_level=9, magnitude_std=0)
    random.seed(0)
    image = _image()
    inverted = sum(np.array_equal(np.asarray(augment(image)), 255 - np.asarray(image)) for _ in range(400))
    assert 160 < inverted < 240
