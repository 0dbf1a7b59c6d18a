"""The training knobs: where each is fixed in the YAML, its default, and what values are valid.

A knob is fixed under `data:`, `model:` or `train:` (at the YAML path given here) or searched
under `space:` by its name, never both. This table is the single source of truth for both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from sweeper.errors import quoted

Check = Callable[[Any], "str | None"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def int_at_least(lo: int) -> Check:
    return lambda v: None if _is_int(v) and v >= lo else f"must be an integer >= {lo}, got {quoted(v)}"


def float_range(lo: float, hi: float | None = None, lo_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        ok = _is_number(v) and (v > lo if lo_open else v >= lo) and (hi is None or v <= hi)
        if ok:
            return None
        bound = f"> {lo}" if lo_open else f">= {lo}"
        if hi is not None:
            bound += f" and <= {hi}"
        return f"must be a number {bound}, got {quoted(v)}"

    return check


def one_of(*names: str) -> Check:
    return lambda v: None if v in names else f"must be one of {', '.join(names)}; got {quoted(v)}"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, got {quoted(v)}"


def text(v: Any) -> str | None:
    return None if isinstance(v, str) and v else f"must be a non-empty string, got {quoted(v)}"


def pretrained(v: Any) -> str | None:
    if isinstance(v, bool) or (isinstance(v, str) and v):
        return None
    return f"must be true (timm hub weights), false, or a checkpoint path; got {quoted(v)}"


def ema_decay(v: Any) -> str | None:
    if _is_number(v) and 0 <= v < 1:
        return None
    return f"must be 0 (no EMA) or a number between 0 and 1, e.g. 0.9998; got {quoted(v)}"


def fraction_of_epoch(v: Any) -> str | None:
    if _is_number(v) and 0 < v <= 1 and abs(1 / v - round(1 / v)) < 1e-9 and round(1 / v) <= 8:
        return None
    return f"must be 1 (once an epoch) or 1/k of an epoch, e.g. 0.5 (twice an epoch); got {v!r}"


def milestones(v: Any) -> str | None:
    if (
        isinstance(v, list)
        and v
        and all(_is_int(m) and m > 0 for m in v)
        and all(a < b for a, b in zip(v, v[1:]))
    ):
        return None
    return f"must be a list of increasing positive epoch numbers, e.g. [30, 60, 90]; got {quoted(v)}"


@dataclass(frozen=True)
class Knob:
    name: str
    path: tuple[str, ...]  # where the knob is fixed in the YAML
    default: Any
    check: Check
    kind: str  # "int" | "float" | "other": how a {low, high} range is sampled
    help: str

    @property
    def yaml_path(self) -> str:
        return ".".join(self.path)


def _k(name: str, path: str, default: Any, check: Check, kind: str, help: str) -> Knob:
    return Knob(name, tuple(path.split(".")), default, check, kind, help)


KNOBS: tuple[Knob, ...] = (
    _k("image_size", "data.image_size", 224, int_at_least(8), "int", "input size in pixels"),
    _k("model", "model.name", "resnet50", text, "other", "any timm model name"),
    _k("pretrained", "model.pretrained", False, pretrained, "other",
       "true (timm hub), false, or a local checkpoint path"),
    _k("frozen_stages", "model.frozen_stages", -1, int_at_least(-1), "int",
       "-1 freezes nothing; k >= 0 freezes the stem and stages 1..k (mmcls semantics)"),
    _k("backbone_lr_mult", "model.backbone_lr_mult", 1.0, float_range(0, lo_open=True), "float",
       "lr multiplier for every layer but the classifier head"),
    _k("epochs", "train.epochs", 10, int_at_least(1), "int", "training epochs"),
    _k("batch_size", "train.batch_size", 64, int_at_least(1), "int", "images per step"),
    _k("lr", "train.lr", 0.1, float_range(0, lo_open=True), "float",
       "learning rate at base_batch_size (see lr_scaling)"),
    _k("lr_scaling", "train.lr_scaling.rule", "none", one_of("linear", "sqrt", "none"), "other",
       "scale lr by batch_size / base_batch_size (linear) or its square root (sqrt)"),
    _k("base_batch_size", "train.lr_scaling.base_batch_size", 64, int_at_least(1), "int",
       "the batch size the lr is given for"),
    _k("optimizer", "train.optimizer.name", "sgd", one_of("sgd", "adamw"), "other", "optimizer"),
    _k("momentum", "train.optimizer.momentum", 0.9, float_range(0, 1), "float", "SGD momentum"),
    _k("nesterov", "train.optimizer.nesterov", False, boolean, "other", "SGD Nesterov momentum"),
    _k("weight_decay", "train.optimizer.weight_decay", 1e-4, float_range(0), "float",
       "weight decay"),
    _k("schedule", "train.schedule", "step", one_of("step", "cosine", "1x", "2x", "20e"), "other",
       "step (per epoch, at milestones), cosine (per iteration, to min_lr), or MMDetection's "
       "1x/2x/20e (step at 8/12+11/12, 16/24+22/24, 16/20+19/20 of the epochs, with warmup)"),
    _k("milestones", "train.milestones", None, milestones, "other",
       "epochs at which a step schedule multiplies lr by gamma (default: mmcls's 30/60/90 of 100 "
       "epochs, scaled to train.epochs)"),
    _k("gamma", "train.gamma", 0.1, float_range(0, 1, lo_open=True), "float", "step factor"),
    _k("min_lr", "train.min_lr", 0.0, float_range(0), "float", "final lr of a cosine schedule"),
    _k("warmup", "train.warmup.type", "none", one_of("none", "constant", "linear", "exp"), "other",
       "warmup shape (mmcv semantics: starts at lr x warmup_ratio)"),
    _k("warmup_iters", "train.warmup.iters", 0, int_at_least(0), "int", "warmup length in steps"),
    _k("warmup_epochs", "train.warmup.epochs", 0, int_at_least(0), "int",
       "warmup length in epochs (instead of iters)"),
    _k("warmup_ratio", "train.warmup.ratio", 0.001, float_range(0, 1, lo_open=True), "float",
       "warmup starts at lr x warmup_ratio"),
    _k("augment", "train.augment.policy", "flip_crop", text, "other",
       "augmentation policy set: none, flip_crop, or a name from augment_policies"),
    _k("num_ops", "train.augment.num_ops", 2, int_at_least(1), "int",
       "RandAugment operations per image"),
    _k("magnitude", "train.augment.magnitude", 9, float_range(0, 10), "float",
       "RandAugment magnitude (0-10)"),
    _k("magnitude_std", "train.augment.magnitude_std", 0.5, float_range(0), "float",
       "RandAugment magnitude noise"),
    _k("label_smoothing", "train.label_smoothing", 0.0, float_range(0, 1), "float",
       "cross-entropy label smoothing"),
    _k("mixup_alpha", "train.batch_augment.mixup_alpha", 0.0, float_range(0), "float",
       "Mixup's Beta(alpha, alpha) per batch (0: off; mmcls's Swin recipe: 0.8)"),
    _k("cutmix_alpha", "train.batch_augment.cutmix_alpha", 0.0, float_range(0), "float",
       "CutMix's Beta(alpha, alpha) per batch (0: off; mmcls's Swin recipe: 1.0)"),
    _k("mix_prob", "train.batch_augment.prob", 1.0, float_range(0, 1), "float",
       "probability that a batch is mixed at all (timm's mixup prob)"),
    _k("mix_switch_prob", "train.batch_augment.switch_prob", 0.5, float_range(0, 1), "float",
       "with both alphas set, probability that a mixed batch gets CutMix rather than Mixup"),
    _k("drop_path_rate", "model.drop_path_rate", 0.0, float_range(0, 1), "float",
       "stochastic depth: timm's drop_path_rate, 0 at the first block rising to this at the last"),
    _k("ema_decay", "train.ema.decay", 0.0, ema_decay, "float",
       "EMA of the weights (timm ModelEmaV3, mmcls EMAHook with momentum 1 - decay); validation "
       "and the checkpoint use the EMA weights. 0: off"),
    _k("seed", "train.seed", 0, int_at_least(0), "int", "random seed of the trial"),
    _k("eval_every", "train.eval_every", 1.0, fraction_of_epoch, "float",
       "validate every this many epochs: 1, or 1/k (0.5: also after half of each epoch's steps)"),
    _k("precision", "train.precision", "auto", one_of("auto", "bf16", "fp16", "fp32"), "other",
       "auto: bf16 autocast on GPUs from sm_80 and CPUs with native bf16, fp16 with a loss scaler on "
       "older GPUs, else fp32"),
)

BY_NAME: dict[str, Knob] = {k.name: k for k in KNOBS}
BY_PATH: dict[tuple[str, ...], Knob] = {k.path: k for k in KNOBS}
DEFAULTS: dict[str, Any] = {k.name: k.default for k in KNOBS}
