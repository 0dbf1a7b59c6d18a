"""Augmentation policy sets produce normalised tensors of the configured size."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sweeper.augment import eval_transform, train_transform
from sweeper.policies import BUILTIN_POLICIES


def _image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))


def test_every_builtin_policy_gives_the_image_size():
    for name, ops in BUILTIN_POLICIES.items():
        out = train_transform(name, ops, 24)(_image())
        assert out.shape == (3, 24, 24) and out.dtype == torch.float32, name


def test_none_is_deterministic_and_randaugment_is_not():
    image = _image()
    none = train_transform("none", None, 24)
    assert torch.equal(none(image), none(image))
    assert torch.equal(none(image), eval_transform(24)(image))
    torch.manual_seed(0)
    rand = train_transform("swin_randaug", BUILTIN_POLICIES["swin_randaug"], 24, num_ops=2, magnitude=9)
    outs = [rand(image) for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_a_policy_restricted_to_one_operation_uses_only_it():
    t = train_transform("inv", ("Invert",), 24, num_ops=1)
    ops = t.transforms[2].ops
    assert [op.name for op in ops] == ["Invert"]
