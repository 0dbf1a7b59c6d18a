"""The lr at chosen iterations equals mmcv 1.x's formulas (values worked out by hand here)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sweeper.spec.sweep_spec import parse_spec
from sweeper.spec.trial_config import resolve
from sweeper.testing import tiny_space
from sweeper.train.schedule import LrSchedule


def step(**kw) -> LrSchedule:
    args = dict(epochs=6, iters_per_epoch=10, schedule="step", milestones=(2, 4),
                gamma=0.1)
    return LrSchedule(**{**args, **kw})


@pytest.mark.parametrize("epoch, iteration, expected", [
    (0, 0, 0.1), (1, 19, 0.1), (2, 20, 0.01), (3, 39, 0.01), (4, 40, 0.001), (5, 59, 0.001),
])
def test_step_schedule_multiplies_by_gamma_at_each_milestone(epoch, iteration, expected):
    assert step()(epoch, iteration, 0.1) == pytest.approx(expected)


@pytest.mark.parametrize("iteration, expected", [
    (0, 0.1 * 0.001),                                    # starts at lr x ratio
    (3, 0.1 * (1 - (1 - 3 / 5) * (1 - 0.001))),          # mmcv: k = (1 - i/W)(1 - ratio)
    (4, 0.1 * (1 - (1 - 4 / 5) * (1 - 0.001))),
    (5, 0.1),                                            # warmup over
])
def test_linear_warmup(iteration, expected):
    assert step(warmup="linear", warmup_iters=5)(0, iteration, 0.1) == pytest.approx(expected)


def test_exp_and_constant_warmup():
    exp = step(warmup="exp", warmup_iters=10, warmup_ratio=0.01)
    assert exp(0, 0, 0.1) == pytest.approx(0.1 * 0.01)
    assert exp(0, 5, 0.1) == pytest.approx(0.1 * 0.01 ** 0.5)
    const = step(warmup="constant", warmup_iters=10, warmup_ratio=0.25)
    assert const(0, 9, 0.1) == pytest.approx(0.025) and const(1, 10, 0.1) == pytest.approx(0.1)


def test_warmup_applies_to_the_regular_lr_after_a_milestone():
    # a warmup longer than the first milestone warms up the already-decayed lr (mmcv does so)
    s = step(warmup="linear", warmup_iters=30, warmup_ratio=0.5)
    assert s(2, 25, 0.1) == pytest.approx(0.01 * (1 - (1 - 25 / 30) * 0.5))


def test_cosine_is_per_iteration_down_to_min_lr():
    s = LrSchedule(epochs=6, iters_per_epoch=10, schedule="cosine", min_lr=0.001)
    assert s(0, 0, 0.1) == pytest.approx(0.1)
    assert s(3, 30, 0.1) == pytest.approx(0.001 + 0.099 * (1 + math.cos(math.pi / 2)) / 2)
    assert s(5, 59, 0.1) == pytest.approx(0.001 + 0.099 * (1 + math.cos(math.pi * 59 / 60)) / 2)


@pytest.mark.parametrize("rule, expected", [("linear", 0.4), ("sqrt", 0.2), ("none", 0.1)])
def test_lr_scaling_from_base_batch_size(rule, expected):
    doc = tiny_space(train={"lr": 0.1, "batch_size": 256,
                            "lr_scaling": {"rule": rule, "base_batch_size": 64}}, space={})
    doc["space"] = None
    config = resolve(parse_spec(doc), 0, {}, Path("trials"), Path("cache.pt"))
    assert config.scaled_lr == pytest.approx(expected)


def test_warmup_epochs_become_iterations():
    doc = tiny_space(train={"warmup": {"type": "linear", "epochs": 2, "ratio": 0.1}})
    config = resolve(parse_spec(doc), 0, {"lr": 0.05}, Path("trials"), Path("cache.pt"))
    s = LrSchedule.from_config(config, iters_per_epoch=7)
    assert s.warmup_iters == 14 and s(0, 0, 0.05) == pytest.approx(0.005)


def test_cosine_anneals_every_group_to_the_same_absolute_min_lr():
    # mmcv's CosineAnnealing (and mmengine's eta_min) floor every group at min_lr, not at
    # min_lr x its multiplier
    s = LrSchedule(epochs=2, iters_per_epoch=10, schedule="cosine", min_lr=0.002)
    backbone_base = 0.1 * 0.25
    assert s(1, 10, backbone_base) == pytest.approx(0.002 + (backbone_base - 0.002) / 2)
    assert s(1, 20, backbone_base) == pytest.approx(0.002)


def _preset(tmp_path: Path, preset: str, epochs: int, warmup: dict | None = None):
    train = {"schedule": preset, "epochs": epochs, "lr": 0.02, "batch_size": 16}
    if warmup:
        train["warmup"] = warmup
    doc = tiny_space(tmp_path, train=train, space=None)
    return resolve(parse_spec(doc), 0, {}, tmp_path / "trials", tmp_path / "c.pt")


def _mmdet_1x_lr(base: float, epoch: int, iteration: int) -> float:
    """MMDetection's schedule_1x.py: LinearLR(start_factor=0.001, end=500 iters, by_epoch=False),
    MultiStepLR(milestones=[8, 11], gamma=0.1); in mmcv 1.x terms warmup='linear',
    warmup_iters=500, warmup_ratio=0.001, step=[8, 11]."""
    lr = base * 0.1 ** sum(epoch >= m for m in (8, 11))
    if iteration < 500:
        lr *= 1 - (1 - iteration / 500) * (1 - 0.001)
    return lr


@pytest.mark.parametrize("epoch, step_in_epoch", [
    (0, 0), (0, 99), (2, 50), (4, 99), (5, 0), (7, 99), (8, 0), (10, 99), (11, 0), (11, 99)])
def test_1x_preset_gives_mmdetection_lr_at_chosen_iterations(tmp_path, epoch, step_in_epoch):
    config = _preset(tmp_path, "1x", 12)
    schedule = LrSchedule.from_config(config, iters_per_epoch=100)
    iteration = epoch * 100 + step_in_epoch
    assert schedule(epoch, iteration, 0.02) == pytest.approx(_mmdet_1x_lr(0.02, epoch, iteration))


@pytest.mark.parametrize("preset, epochs, expected", [
    ("1x", 12, [8, 11]), ("2x", 24, [16, 22]), ("20e", 20, [16, 19]),
    ("1x", 36, [24, 33]),        # 8/12 and 11/12 of 36
    ("2x", 12, [8, 11]),         # 16/24 and 22/24 of 12
    ("20e", 10, [8, 9]),         # 16/20 and 19/20 of 10
    ("1x", 4, [2, 3]),           # floor(2.67), floor(3.67): both inside the 4 epochs
])
def test_presets_scale_milestones_to_the_trials_epochs(tmp_path, preset, epochs, expected):
    config = _preset(tmp_path, preset, epochs)
    assert (config.schedule, config.milestones, config.gamma) == ("step", expected, 0.1)
    assert (config.warmup, config.warmup_iters, config.warmup_ratio) == ("linear", 500, 0.001)
    assert config.schedule_preset == preset


def test_a_preset_keeps_the_trials_own_warmup(tmp_path):
    config = _preset(tmp_path, "2x", 24, warmup={"type": "constant", "iters": 30, "ratio": 0.1})
    assert (config.warmup, config.warmup_iters, config.warmup_ratio) == ("constant", 30, 0.1)
    assert config.milestones == [16, 22]
