"""MMDetection's stock schedules (`schedule: 1x | 2x | 20e`) as the step schedules they stand
for at a trial's own length; resolved into the trial's config, so workers and exports only
ever see a step schedule."""

from __future__ import annotations

from typing import Any

# MMDetection's stock schedules: (epochs, milestones), gamma 0.1, LinearLR warmup from 0.001 over
# 500 iterations (configs/_base_/schedules/schedule_{1x,2x,20e}.py). A trial of E epochs gets the
# milestones at the same fractions of E: floor(m / epochs x E), at least epoch 1.
PRESETS: dict[str, tuple[int, tuple[int, ...]]] = {"1x": (12, (8, 11)), "2x": (24, (16, 22)),
                                                   "20e": (20, (16, 19))}
PRESET_GAMMA = 0.1
PRESET_WARMUP = {"warmup": "linear", "warmup_iters": 500, "warmup_epochs": 0, "warmup_ratio": 0.001}


# mmcls's ImageNet step recipe (configs/_base_/schedules/imagenet_bs256.py): 100 epochs, steps at
# 30/60/90. Unset milestones are these at the same fractions of the trial's epochs E, as the
# presets are, keeping only the distinct ones before E (none for E = 1: a constant lr).
RECIPE = (100, (30, 60, 90))


def default_milestones(epochs: int) -> list[int]:
    total, milestones = RECIPE
    return sorted(e for e in {max(1, m * epochs // total) for m in milestones} if e < epochs)


def preset_milestones(name: str, epochs: int) -> list[int]:
    total, milestones = PRESETS[name]
    return [max(1, m * epochs // total) for m in milestones]


def expand_preset(knobs: dict[str, Any]) -> dict[str, Any]:
    """A preset schedule as the step schedule it stands for; the preset's warmup applies unless
    the trial sets a warmup of its own."""
    name = knobs["schedule"]
    if name not in PRESETS:
        return knobs
    out = {**knobs, "schedule": "step", "milestones": preset_milestones(name, knobs["epochs"]),
           "gamma": PRESET_GAMMA}
    if knobs["warmup"] == "none":
        out.update(PRESET_WARMUP)
    return out
