"""The recipe's batch-level regularizers: Mixup / CutMix on training batches (timm's `Mixup`, with
the soft-target loss they need) and an exponential moving average of the weights (timm's
`ModelEmaV3`), which validation and the checkpoint use when set."""

from __future__ import annotations

from typing import Any

import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn

from sweeper.spec.trial_config import TrialConfig


class BatchMix:
    """Mixup or CutMix per batch, as timm's `Mixup(mode="batch")`: the batch is mixed with
    probability `mix_prob`, by CutMix with probability `mix_switch_prob` when both alphas are
    set; each image is paired with the batch's reverse. Targets come back soft, with the label
    smoothing applied as timm (and mmcls's LabelSmoothLoss on mixed labels) do."""

    def __init__(self, config: TrialConfig, num_classes: int):
        self.num_classes, self.smoothing = num_classes, config.label_smoothing
        self.mixup = Mixup(mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha,
                           prob=config.mix_prob, switch_prob=config.mix_switch_prob, mode="batch",
                           correct_lam=True, label_smoothing=config.label_smoothing,
                           num_classes=num_classes)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(x) % 2 == 0:
            return self.mixup(x, y)
        # timm mixes even batches only; an odd batch (an odd batch_size) mixes all but its last image
        head, target = self.mixup(x[:-1], y[:-1])
        last = mixup_target(y[-1:], self.num_classes, 1.0, self.smoothing)
        return torch.cat([head, x[-1:]]), torch.cat([target, last])


def batch_mix(config: TrialConfig, num_classes: int) -> BatchMix | None:
    return BatchMix(config, num_classes) if config.mixes else None


class SoftTargetLoss(SoftTargetCrossEntropy):
    """timm's soft-target cross-entropy on float32 logits: under bf16 autocast the log-softmax
    would otherwise run in bf16 (nn.CrossEntropyLoss is kept in float32 by autocast itself)."""

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float(), target)


def criterion(config: TrialConfig) -> nn.Module:
    """Cross-entropy on hard labels; on mixed batches the soft-target cross-entropy (their
    targets already carry the label smoothing)."""
    if config.mixes:
        return SoftTargetLoss()
    return nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)


def weight_average(config: TrialConfig, model: nn.Module) -> ModelEmaV3 | None:
    """The EMA of the weights, from the model as it starts (as mmcv's EMAHook does); `ema = decay x
    ema + (1 - decay) x weights` after every optimizer step. Only parameters are averaged; the
    BatchNorm statistics are the trained model's, as in mmcv's EMAHook and mmengine's default
    (update_buffers=False), so an exported config trains the same average."""
    if not config.ema_decay:
        return None
    return ModelEmaV3(model, decay=config.ema_decay, exclude_buffers=True)


def validated(model: nn.Module, ema: ModelEmaV3 | None) -> nn.Module:
    """What validation scores and the checkpoint holds: the EMA weights when there are some."""
    return ema.module if ema is not None else model


def ema_state(ema: ModelEmaV3 | None) -> dict[str, Any] | None:
    return ema.module.state_dict() if ema is not None else None


def load_ema_state(ema: ModelEmaV3 | None, state: dict[str, Any] | None) -> None:
    if ema is not None and state is not None:
        ema.module.load_state_dict(state)
