"""A trial as an MMPretrain 1.x config: mmengine param schedulers that give mmcv's lr at every
iteration, 1.x pipeline names, dataloaders and `data_preprocessor`."""

from __future__ import annotations

import math
from typing import Any

from sweeper.analyze.export import common
from sweeper.analyze.export.common import SideFiles
from sweeper.data.datasets import CROP_RATIO
from sweeper.spec.trial_config import TrialConfig


def mmpretrain_schedulers(config: TrialConfig, iters_per_epoch: int | None,
                          notes: list[str]) -> list[dict[str, Any]]:
    """mmengine param schedulers that give mmcv's lr (see train/schedule.py) at every iteration."""
    schedulers: list[dict[str, Any]] = []
    if config.warmup != "none":
        if config.warmup == "exp":
            notes.append("exp warmup has no mmengine scheduler; LinearLR stands in for it")
        kind = {"constant": {"type": "ConstantLR", "factor": config.warmup_ratio}}.get(
            config.warmup, {"type": "LinearLR", "start_factor": config.warmup_ratio})
        warmup_iters = config.warmup_iters or (
            config.warmup_epochs * iters_per_epoch if iters_per_epoch else None)
        if warmup_iters:
            # mmengine's warmups end one iteration before `end` (mmcv's at warmup_iters)
            schedulers.append({**kind, "by_epoch": False, "begin": 0, "end": warmup_iters + 1})
        else:
            notes.append("the warmup is given in epochs and the iterations per epoch are not "
                         "known: mmengine ends it one iteration earlier than the trial did")
            schedulers.append({**kind, "by_epoch": True, "begin": 0, "end": config.warmup_epochs,
                               "convert_to_iter_based": True})
    if config.schedule == "step":
        schedulers.append({"type": "MultiStepLR", "by_epoch": True, "milestones": config.milestones,
                           "gamma": config.gamma})
    else:
        schedulers.append({"type": "CosineAnnealingLR", "by_epoch": True, "begin": 0,
                           "end": config.epochs, "eta_min": config.min_lr,
                           "convert_to_iter_based": True})
        if config.warmup != "none" and config.min_lr > 0 and iters_per_epoch:
            worst = _chained_warmup_deviation(config, iters_per_epoch)
            notes.append(f"mmengine chains the warmup onto a cosine with eta_min > 0, so its lr "
                         f"differs from the trial's by up to {worst:.3g} of the lr during warmup "
                         "and the rest of the cosine (mmcv multiplies the closed form instead)")
    return schedulers


def _chained_warmup_deviation(config: TrialConfig, iters_per_epoch: int) -> float:
    """The largest relative difference between mmcv's warmup x cosine and mmengine's chain.

    mmengine steps each scheduler on the lr it finds: LinearLR/ConstantLR multiply it by the
    ratio of consecutive factors, CosineAnnealingLR maps lr -> eta_min + (lr - eta_min) x
    (1 + cos(pi t/T)) / (1 + cos(pi (t-1)/T)). Followed here for the head and the backbone.
    """
    from sweeper.train.schedule import LrSchedule

    schedule = LrSchedule.from_config(config, iters_per_epoch)
    total = config.epochs * iters_per_epoch
    worst = 0.0
    for base in {config.scaled_lr, config.scaled_lr * config.backbone_lr_mult}:
        chained, factor = schedule(0, 0, base), schedule(0, 0, base) / base
        for t in range(1, total):
            epoch = t // iters_per_epoch
            target = schedule(epoch, t, base)
            new_factor = target / schedule.regular(epoch, t, base)
            chained *= new_factor / factor
            factor = new_factor
            c_now, c_before = 1 + math.cos(math.pi * t / total), 1 + math.cos(math.pi * (t - 1) / total)
            chained = config.min_lr + (chained - config.min_lr) * c_now / c_before
            worst = max(worst, abs(chained - target) / target)
    return worst


def mmpretrain_config(config: TrialConfig, classes: list[str], value: float | None = None,
                      files: SideFiles = SideFiles()) -> str:
    backbone, channels, notes = common.backbone(config, files)
    train_src, val_src, data_notes = common.data_sources(config, files, "data_root")
    notes += data_notes
    size = config.image_size
    center_crop = [{"type": "ResizeEdge", "scale": int(size / CROP_RATIO), "edge": "short"},
                   {"type": "CenterCrop", "crop_size": size}]
    train_aug = common.train_aug(config, center_crop, "scale", "prob")
    test_pipeline = [{"type": "LoadImageFromFile"}, *center_crop, {"type": "PackInputs"}]
    schedulers = mmpretrain_schedulers(config, files.iters_per_epoch, notes)
    optimizer = common.optimizer(config)
    paramwise = optimizer.pop("paramwise_cfg", None)
    loader = {"batch_size": config.batch_size, "num_workers": common.export_workers(config)}
    val_loader = {**loader, "dataset": {"type": "CustomDataset", **val_src, "classes": classes,
                                        "pipeline": test_pipeline},
                  "sampler": {"type": "DefaultSampler", "shuffle": False}}
    topk = (1, min(5, len(classes)))
    # mmengine's AmpOptimWrapper: autocast at `dtype` (None: float16) with a dynamic loss scale
    amp = {"fp16": {"type": "AmpOptimWrapper", "loss_scale": "dynamic"},
           "bf16": {"type": "AmpOptimWrapper", "loss_scale": "dynamic", "dtype": "bfloat16"}}.get(
        common.amp_notes(config, notes), {})
    preprocessor = {"num_classes": len(classes), "mean": [m * 255 for m in config.mean],
                    "std": [s * 255 for s in config.std], "to_rgb": True}
    if mixes := common.mix_probs(config):
        preprocessor["batch_augments"] = {"augments": [{"type": name, "alpha": alpha} for name, alpha, _ in mixes],
                                          "probs": [prob for *_, prob in mixes]}
        notes.append(common.MIX_NOTE)
    hooks = common.ema_hook(config)
    if hooks:
        notes.append("mmengine's EMA starts from the weights after the first iteration, the trial's "
                     "from the starting weights")
    header = common.header(config, value, notes, "MMPretrain 1.x: python tools/train.py THIS_FILE")
    return common.render_assignments(header, [
        ("default_scope", "mmpretrain"),
        ("model", {"type": "ImageClassifier", "backbone": backbone,
                   "neck": {"type": "GlobalAveragePooling"},
                   "head": common.head(config, classes, channels, files)}),
        ("data_preprocessor", preprocessor),
        ("train_dataloader", {**loader, "drop_last": files.drop_last,
                              "dataset": {"type": "CustomDataset", **train_src, "classes": classes,
                                          "pipeline": [{"type": "LoadImageFromFile"}, *train_aug,
                                                       {"type": "PackInputs"}]},
                              "sampler": {"type": "DefaultSampler", "shuffle": True}}),
        ("val_dataloader", val_loader),
        ("val_evaluator", {"type": "Accuracy", "topk": topk}),
        ("test_dataloader", val_loader),
        ("test_evaluator", {"type": "Accuracy", "topk": topk}),
        ("optim_wrapper", {**amp, "optimizer": optimizer, **({"paramwise_cfg": paramwise} if paramwise else {})}),
        ("param_scheduler", schedulers),
        *([("custom_hooks", hooks)] if hooks else []),
        ("train_cfg", {"by_epoch": True, "max_epochs": config.epochs, "val_interval": 1}),
        ("val_cfg", {}),
        ("test_cfg", {}),
        # the optimizer's lr is already the trial's (scaled from base_batch_size by sweeper);
        # enabling this would scale it a second time
        ("auto_scale_lr", {"base_batch_size": config.batch_size, "enable": False}),
        ("randomness", {"seed": config.seed}),
    ])
