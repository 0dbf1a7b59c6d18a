"""What the mmcls 0.x and mmpretrain 1.x exports share: the files beside a config, literal-only
rendering, and the model, loss, augmentation, optimizer and dataset pieces whose meaning is the
same in both (0.x and 1.x differ only in key names, passed in)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeper.spec.policies import GEOMETRIC_INTERPOLATION, TOTAL_LEVEL, policies_for
from sweeper.spec.trial_config import TrialConfig

_RESNET = re.compile(r"^resnet(18|34|50|101|152)$")


@dataclass(frozen=True)
class SideFiles:
    """What an mmcls / mmpretrain export needs beside the config to retrain the same run."""

    init_checkpoint: str | None = None  # the trial's starting weights, under mmcls keys
    head_in_checkpoint: bool = False  # the starting head came from the checkpoint too
    train_ann: str | None = None  # file lists of a val_fraction split (mmcls `ann_file`)
    val_ann: str | None = None
    drop_last: bool = True  # as the worker's loader (see loading.drops_last_batch)
    iters_per_epoch: int | None = None  # known when the trial's train set size is


def literal(value: Any, indent: int = 0) -> str:
    """Python literal text: on one line when it fits, else one item per line (OpenMMLab style)."""
    pad = " " * (indent + 4)
    if isinstance(value, dict):
        items = [f"{k!r}: {literal(v, indent + 4)}" for k, v in value.items()]
        open_, close = "{", "}"
    elif isinstance(value, (list, tuple)):
        items = [literal(v, indent + 4) for v in value]
        open_, close = ("[", "]") if isinstance(value, list) else ("(", ")")
        if len(items) == 1 and isinstance(value, tuple):
            return f"({items[0]},)"
    elif isinstance(value, float):
        return repr(float(f"{value:.12g}"))  # exact to 12 digits, without float noise
    else:
        return repr(value)
    one_line = open_ + ", ".join(items) + close
    if "\n" not in one_line and len(one_line) + indent < 88:
        return one_line
    if open_ == "[" and not any(isinstance(v, (dict, list, tuple)) for v in value):
        lines = [""]  # a long list of scalars (class names): fill lines
        for item in items:
            if lines[-1] and len(pad) + len(lines[-1]) + len(item) + 2 > 88:
                lines.append("")
            lines[-1] += f"{item}, "
        return "[\n" + "\n".join(pad + line.rstrip() for line in lines) + "\n" + " " * indent + "]"
    return open_ + "\n" + "\n".join(f"{pad}{v}," for v in items) + "\n" + " " * indent + close


def render_assignments(header: list[str], assignments: list[tuple[str, Any]]) -> str:
    # a header line holds strings from the trial's config (a model name, a checkpoint path): a
    # line break in one must not end the comment and start a statement
    lines = [f"# {line}" if line else "#" for h in header for line in (h.splitlines() or [""])] + [""]
    for name, value in assignments:
        lines.append(f"{name} = {literal(value)}")
    return "\n".join(lines) + "\n"


def native_backbone(model: str) -> bool:
    """mmcls has its own ResNet for these; every other timm model goes in a TIMMBackbone."""
    return bool(_RESNET.match(model))


def backbone(config: TrialConfig, files: SideFiles) -> tuple[dict[str, Any], int, list[str]]:
    """mmcls backbone dict, its output channels, and notes on what does not map."""
    notes: list[str] = []
    match = _RESNET.match(config.model)
    if match:
        depth = int(match.group(1))
        backbone: dict[str, Any] = {"type": "ResNet", "depth": depth, "num_stages": 4,
                                    "out_indices": (3,), "frozen_stages": config.frozen_stages,
                                    "style": "pytorch"}
        channels = 512 if depth < 50 else 2048
    else:
        import timm  # deferred: only exports of non-ResNet models build one

        backbone = {"type": "TIMMBackbone", "model_name": config.model, "pretrained": False}
        channels = timm.create_model(config.model, pretrained=False, num_classes=0).num_features
        notes.append(f"timm model {config.model!r} has no native mmcls backbone: it is wrapped "
                     "in TIMMBackbone (mmcls >= 0.17)")
        if config.frozen_stages >= 0:
            notes.append(f"frozen_stages={config.frozen_stages} does not map onto TIMMBackbone; "
                         "freeze those stages yourself")
    if config.drop_path_rate:  # mmcls's own ResNet and TIMMBackbone (a timm kwarg) both take it
        backbone["drop_path_rate"] = config.drop_path_rate
    if files.init_checkpoint:
        backbone["init_cfg"] = {"type": "Pretrained", "checkpoint": files.init_checkpoint,
                                "prefix": "backbone."}
        source = "timm hub weights" if config.pretrained is True else config.pretrained
        notes.append(f"starting weights ({source}) converted to mmcls keys in {files.init_checkpoint}")
    elif config.pretrained:
        notes.append("the trial's starting weights were not written; this config starts from scratch")
    return backbone, channels, notes


def head(config: TrialConfig, classes: list[str], channels: int, files: SideFiles) -> dict[str, Any]:
    head = {"type": "LinearClsHead", "num_classes": len(classes), "in_channels": channels,
            "loss": loss(config), "topk": (1, min(5, len(classes)))}
    if files.init_checkpoint and files.head_in_checkpoint:
        head["init_cfg"] = {"type": "Pretrained", "checkpoint": files.init_checkpoint, "prefix": "head."}
    return head


def loss(config: TrialConfig) -> dict[str, Any]:
    # LabelSmoothLoss takes mixed (soft) labels as they come and smooths them, as timm's Mixup
    # does; plain cross-entropy needs use_soft for them
    if config.label_smoothing > 0:
        return {"type": "LabelSmoothLoss", "label_smooth_val": config.label_smoothing,
                "mode": "original", "loss_weight": 1.0}
    return {"type": "CrossEntropyLoss", "loss_weight": 1.0, **({"use_soft": True} if config.mixes else {})}


def mix_probs(config: TrialConfig) -> list[tuple[str, float, float]]:
    """(Mixup | CutMix, alpha, probability per batch) as OpenMMLab's batch augments take them.

    timm mixes a batch with probability mix_prob, by CutMix with probability switch_prob when
    both alphas are set; OpenMMLab picks one augment per batch by its probability (none with the
    rest): the same three outcomes at mix_prob x (1 - switch_prob), mix_prob x switch_prob and
    1 - mix_prob. Augments with probability 0 are left out."""
    if not config.mixes:
        return []
    both = config.mixup_alpha > 0 and config.cutmix_alpha > 0
    cutmix_share = config.mix_switch_prob if both else float(config.cutmix_alpha > 0)
    out = [("Mixup", config.mixup_alpha, config.mix_prob * (1 - cutmix_share)),
           ("CutMix", config.cutmix_alpha, config.mix_prob * cutmix_share)]
    return [(name, float(alpha), prob) for name, alpha, prob in out if alpha > 0 and prob > 0]


MIX_NOTE = ("Mixup/CutMix pair each image with a random permutation of the batch here, with the "
            "batch's reverse in the trial (timm); lambda ~ Beta(alpha, alpha), the CutMix box and "
            "its area correction are the same")


def ema_hook(config: TrialConfig) -> list[dict[str, Any]]:
    """OpenMMLab's EMAHook for the trial's EMA: momentum is 1 - decay (ema = (1 - momentum) x ema +
    momentum x weights), parameters only, evaluated and saved in place of the weights."""
    if not config.ema_decay:
        return []
    return [{"type": "EMAHook", "momentum": float(f"{1 - config.ema_decay:.12g}"), "priority": "ABOVE_NORMAL"}]


def randaugment(config: TrialConfig) -> dict[str, Any] | None:
    if not config.augment_ops:
        return None
    # images are BGR at this point of an mmcls pipeline, so the fill is the mean in BGR order
    pad_val = [round(255 * m) for m in reversed(config.mean)]
    return {"type": "RandAugment", "policies": policies_for(config.augment_ops),
            "num_policies": config.num_ops, "total_level": TOTAL_LEVEL,
            "magnitude_level": config.magnitude, "magnitude_std": config.magnitude_std,
            "hparams": {"pad_val": pad_val, "interpolation": GEOMETRIC_INTERPOLATION}}


def train_aug(config: TrialConfig, center_crop: list[dict[str, Any]], size_key: str,
               flip_key: str) -> list[dict[str, Any]]:
    """The policy set as pipeline steps; 0.x and 1.x differ only in two key names."""
    if config.augment_ops is None:
        return center_crop
    steps = [{"type": "RandomResizedCrop", size_key: config.image_size},
             {"type": "RandomFlip", flip_key: 0.5, "direction": "horizontal"}]
    if (ra := randaugment(config)) is not None:
        steps.append(ra)
    return steps


def export_workers(config: TrialConfig) -> int:
    """Loader processes for mmcls/mmpretrain: the trial's own count (auto: 2, their default),
    never fewer than 2 (their loaders decode JPEGs each epoch; sweeper's read a decoded cache)."""
    return max(config.num_workers if isinstance(config.num_workers, int) else 2, 2)


def header(config: TrialConfig, value: float | None, notes: list[str], how: str) -> list[str]:
    score = f": {config.objective} {value:.4f}" if value is not None else ""
    if config.schedule_preset:
        notes = [f"schedule {config.schedule_preset} (MMDetection's) for {config.epochs} epochs is "
                 f"the step schedule at {config.milestones}, gamma {config.gamma}", *notes]
    return ([f"{config.model}, trial {config.number} of sweeper study {config.study!r}{score}",
             f"searched: {config.params}", how] + [f"NOTE: {n}" for n in notes])


def optimizer(config: TrialConfig) -> dict[str, Any]:
    if config.optimizer == "sgd":
        opt = {"type": "SGD", "lr": config.scaled_lr, "momentum": config.momentum,
               "weight_decay": config.weight_decay, "nesterov": config.nesterov}
    else:
        opt = {"type": "AdamW", "lr": config.scaled_lr, "weight_decay": config.weight_decay}
    if config.backbone_lr_mult != 1.0:
        opt["paramwise_cfg"] = {"custom_keys": {"backbone": {"lr_mult": config.backbone_lr_mult}}}
    return opt


def data_sources(config: TrialConfig, files: SideFiles, root_key: str) -> tuple[dict, dict, list[str]]:
    """Where mmcls finds train and val images: folders, or the split's file lists."""
    if files.train_ann and files.val_ann:
        root = config.data_root
        return ({root_key: root, "ann_file": files.train_ann},
                {root_key: root, "ann_file": files.val_ann}, [])
    if config.data_root and (Path(config.data_root) / "train").is_dir():
        root = Path(config.data_root)
        return {root_key: str(root / "train")}, {root_key: str(root / "val")}, []
    root = config.data_root or f"data/{config.data_builtin}"
    return ({root_key: f"{root}/train"}, {root_key: f"{root}/val"},
            [f"the sweep split {root} by val_fraction={config.val_fraction}, which mmcls cannot "
             "read; put the split on disk as train/ and val/ folders"])


def amp_notes(config: TrialConfig, notes: list[str]) -> str:
    """The precision an export trains at: fp16 and bf16 as the trial set them; `auto` chose per
    device, so the export keeps OpenMMLab's default (fp32) and says how to switch."""
    if config.precision == "auto":
        notes.append("the trial's precision was auto (bf16 on GPUs from sm_80 and bf16 CPUs, fp16 on "
                     "older GPUs, else fp32); this config trains in fp32 unless you add mixed precision")
    return config.precision
