"""Learning-rate schedules with mmcv 1.x semantics, so exported configs train the same way.

Per parameter group, from the group's base lr b (the head's lr, or lr x backbone_lr_mult):
- step: per epoch, lr = b x gamma^(number of milestones <= epoch)            (StepLrUpdaterHook)
- cosine: per iteration, lr = min_lr + (b - min_lr)(1 + cos(pi t/T))/2        (CosineAnnealing,
  by_epoch=False); min_lr is the same absolute floor for every group, as in mmcv and mmengine
- warmup while iteration < warmup_iters, applied to the regular lr (LrUpdaterHook):
  constant: lr x ratio; linear: lr x (1 - (1 - i/W)(1 - ratio)); exp: lr x ratio^(1 - i/W)
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LrSchedule:
    epochs: int
    iters_per_epoch: int
    schedule: str = "step"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    min_lr: float = 0.0
    warmup: str = "none"
    warmup_iters: int = 0
    warmup_ratio: float = 0.001

    @classmethod
    def from_config(cls, config, iters_per_epoch: int) -> "LrSchedule":
        warmup_iters = config.warmup_iters or config.warmup_epochs * iters_per_epoch
        return cls(
            epochs=config.epochs, iters_per_epoch=iters_per_epoch, schedule=config.schedule,
            milestones=tuple(config.milestones), gamma=config.gamma, min_lr=config.min_lr,
            warmup=config.warmup if warmup_iters else "none", warmup_iters=warmup_iters,
            warmup_ratio=config.warmup_ratio,
        )

    def regular(self, epoch: int, iteration: int, base_lr: float) -> float:
        if self.schedule == "step":
            return base_lr * self.gamma ** bisect.bisect_right(self.milestones, epoch)
        t = iteration / (self.epochs * self.iters_per_epoch)
        return self.min_lr + (base_lr - self.min_lr) * (math.cos(math.pi * t) + 1) / 2

    def __call__(self, epoch: int, iteration: int, base_lr: float) -> float:
        """The lr of a group with `base_lr` at 0-based `epoch` and global 0-based `iteration`."""
        lr = self.regular(epoch, iteration, base_lr)
        if self.warmup == "none" or iteration >= self.warmup_iters:
            return lr
        progress = iteration / self.warmup_iters
        if self.warmup == "constant":
            return lr * self.warmup_ratio
        if self.warmup == "linear":
            return lr * (1 - (1 - progress) * (1 - self.warmup_ratio))
        return lr * self.warmup_ratio ** (1 - progress)


def set_lr(optimizer, schedule: LrSchedule, epoch: int, iteration: int) -> None:
    """Set every group's lr for this step, from its own base lr (`base_lr`, see model.param_groups)."""
    for group in optimizer.param_groups:
        group["lr"] = schedule(epoch, iteration, group["base_lr"])
