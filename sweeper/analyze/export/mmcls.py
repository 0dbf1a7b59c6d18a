"""A trial as an MMClassification 0.x config (`python tools/train.py THIS_FILE`): mmcv 1.x
`lr_config`, 0.x pipeline names, `data=dict(train=..., val=..., test=...)`."""

from __future__ import annotations

from typing import Any

from sweeper.analyze.export import common
from sweeper.analyze.export.common import SideFiles
from sweeper.data.datasets import CROP_RATIO
from sweeper.spec.trial_config import TrialConfig


def mmcls_config(config: TrialConfig, classes: list[str], value: float | None = None,
                 files: SideFiles = SideFiles()) -> str:
    backbone, channels, notes = common.backbone(config, files)
    train_src, val_src, data_notes = common.data_sources(config, files, "data_prefix")
    notes += data_notes
    size = config.image_size
    norm = {"mean": [round(m * 255, 3) for m in config.mean],
            "std": [round(s * 255, 3) for s in config.std], "to_rgb": True}
    center_crop = [{"type": "Resize", "size": (int(size / CROP_RATIO), -1)},
                   {"type": "CenterCrop", "crop_size": size}]
    train_aug = common.train_aug(config, center_crop, "size", "flip_prob")
    train_pipeline = [{"type": "LoadImageFromFile"}, *train_aug,
                      {"type": "Normalize", **norm}, {"type": "ImageToTensor", "keys": ["img"]},
                      {"type": "ToTensor", "keys": ["gt_label"]},
                      {"type": "Collect", "keys": ["img", "gt_label"]}]
    test_pipeline = [{"type": "LoadImageFromFile"}, *center_crop,
                     {"type": "Normalize", **norm}, {"type": "ImageToTensor", "keys": ["img"]},
                     {"type": "Collect", "keys": ["img"]}]
    val_set = {"type": "CustomDataset", **val_src, "classes": classes, "pipeline": test_pipeline}
    lr_config: dict[str, Any] = (
        {"policy": "step", "step": config.milestones, "gamma": config.gamma}
        if config.schedule == "step" else
        {"policy": "CosineAnnealing", "min_lr": config.min_lr, "by_epoch": False})
    if config.warmup != "none":
        by_epoch = config.warmup_epochs > 0
        lr_config.update({"warmup": config.warmup,
                          "warmup_iters": config.warmup_epochs if by_epoch else config.warmup_iters,
                          "warmup_ratio": config.warmup_ratio, "warmup_by_epoch": by_epoch})
    optimizer = common.optimizer(config)
    paramwise = optimizer.pop("paramwise_cfg", None)
    precision = common.amp_notes(config, notes)
    if precision == "bf16":
        notes.append("mmcls 0.x trains in fp16 or fp32 only: the trial's bf16 is left out (fp32)")
    model = {"type": "ImageClassifier", "backbone": backbone, "neck": {"type": "GlobalAveragePooling"},
             "head": common.head(config, classes, channels, files)}
    if mixes := common.mix_probs(config):
        model["train_cfg"] = {"augments": [
            {"type": f"Batch{name}", "alpha": alpha, "num_classes": len(classes), "prob": prob}
            for name, alpha, prob in mixes]}
        notes.append(common.MIX_NOTE)
    if config.drop_path_rate and common.native_backbone(config.model):
        notes.append(f"mmcls 0.x's ResNet drops every block at drop_path_rate; the trial's (timm's) "
                     f"rate rises linearly from 0 at the first block to {config.drop_path_rate} at the last")
    hooks = common.ema_hook(config)
    for hook in hooks:  # mmcv's EMAHook: momentum min(m, (1 + t) / (warm_up + t)) at step t; the
        if hook["momentum"] > 0.01:  # default warm_up=100 lowers only momenta above 0.01, as the trial does not
            hook["warm_up"] = 1
    header = common.header(config, value, notes, "MMClassification 0.x: python tools/train.py THIS_FILE")
    return common.render_assignments(header, [
        ("model", model),
        ("img_norm_cfg", norm),
        ("train_pipeline", train_pipeline),
        ("test_pipeline", test_pipeline),
        ("data", {"samples_per_gpu": config.batch_size, "workers_per_gpu": common.export_workers(config),
                  "train_dataloader": {"drop_last": files.drop_last},
                  "train": {"type": "CustomDataset", **train_src, "classes": classes,
                            "pipeline": train_pipeline},
                  "val": val_set, "test": val_set}),
        ("evaluation", {"interval": 1, "metric": "accuracy", "metric_options": {"topk": (1, min(5, len(classes)))}}),
        ("optimizer", {**optimizer, **({"paramwise_cfg": paramwise} if paramwise else {})}),
        ("optimizer_config", {"grad_clip": None}),
        # Fp16OptimizerHook with a dynamic loss scale, what torch's GradScaler does
        *([("fp16", {"loss_scale": "dynamic"})] if precision == "fp16" else []),
        ("lr_config", lr_config),
        *([("custom_hooks", hooks)] if hooks else []),
        ("runner", {"type": "EpochBasedRunner", "max_epochs": config.epochs}),
        ("checkpoint_config", {"interval": 1, "max_keep_ckpts": 3}),
        ("log_config", {"interval": 50, "hooks": [{"type": "TextLoggerHook"}]}),
        ("dist_params", {"backend": "nccl"}),
        ("log_level", "INFO"),
        ("load_from", None),
        ("resume_from", None),
        ("workflow", [("train", 1)]),
        ("seed", config.seed),
    ])
