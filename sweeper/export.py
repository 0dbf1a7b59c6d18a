"""A trial's resolved config -> an mmcls 0.x config, an mmpretrain 1.x config, or a fixed YAML space.

The Python configs hold literals only (dicts, lists, tuples, numbers, strings): no imports, no
calls, so `ast.literal_eval` reads every value and loading one runs no code of ours.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sweeper.augment import CROP_RATIO
from sweeper.knobs import KNOBS
from sweeper.policies import GEOMETRIC_INTERPOLATION, TOTAL_LEVEL, policies_for
from sweeper.trial_config import TrialConfig

FORMATS = ("mmcls", "mmpretrain", "yaml")
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


def _literal(value: Any, indent: int = 0) -> str:
    """Python literal text: on one line when it fits, else one item per line (OpenMMLab style)."""
    pad = " " * (indent + 4)
    if isinstance(value, dict):
        items = [f"{k!r}: {_literal(v, indent + 4)}" for k, v in value.items()]
        open_, close = "{", "}"
    elif isinstance(value, (list, tuple)):
        items = [_literal(v, indent + 4) for v in value]
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


def _render(header: list[str], assignments: list[tuple[str, Any]]) -> str:
    lines = [f"# {h}" if h else "#" for h in header] + [""]
    for name, value in assignments:
        lines.append(f"{name} = {_literal(value)}")
    return "\n".join(lines) + "\n"


def native_backbone(model: str) -> bool:
    """mmcls has its own ResNet for these; every other timm model goes in a TIMMBackbone."""
    return bool(_RESNET.match(model))


def _backbone(config: TrialConfig, files: SideFiles) -> tuple[dict[str, Any], int, list[str]]:
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
    if files.init_checkpoint:
        backbone["init_cfg"] = {"type": "Pretrained", "checkpoint": files.init_checkpoint,
                                "prefix": "backbone."}
        source = "timm hub weights" if config.pretrained is True else config.pretrained
        notes.append(f"starting weights ({source}) converted to mmcls keys in {files.init_checkpoint}")
    elif config.pretrained:
        notes.append("the trial's starting weights were not written; this config starts from scratch")
    return backbone, channels, notes


def _head(config: TrialConfig, classes: list[str], channels: int, files: SideFiles) -> dict[str, Any]:
    head = {"type": "LinearClsHead", "num_classes": len(classes), "in_channels": channels,
            "loss": _loss(config), "topk": (1, min(5, len(classes)))}
    if files.init_checkpoint and files.head_in_checkpoint:
        head["init_cfg"] = {"type": "Pretrained", "checkpoint": files.init_checkpoint, "prefix": "head."}
    return head


def _loss(config: TrialConfig) -> dict[str, Any]:
    if config.label_smoothing > 0:
        return {"type": "LabelSmoothLoss", "label_smooth_val": config.label_smoothing,
                "mode": "original", "loss_weight": 1.0}
    return {"type": "CrossEntropyLoss", "loss_weight": 1.0}


def _randaugment(config: TrialConfig) -> dict[str, Any] | None:
    if not config.augment_ops:
        return None
    # images are BGR at this point of an mmcls pipeline, so the fill is the mean in BGR order
    pad_val = [round(255 * m) for m in reversed(config.mean)]
    return {"type": "RandAugment", "policies": policies_for(config.augment_ops),
            "num_policies": config.num_ops, "total_level": TOTAL_LEVEL,
            "magnitude_level": config.magnitude, "magnitude_std": config.magnitude_std,
            "hparams": {"pad_val": pad_val, "interpolation": GEOMETRIC_INTERPOLATION}}


def _train_aug(config: TrialConfig, center_crop: list[dict[str, Any]], size_key: str,
               flip_key: str) -> list[dict[str, Any]]:
    """The policy set as pipeline steps; 0.x and 1.x differ only in two key names."""
    if config.augment_ops is None:
        return center_crop
    steps = [{"type": "RandomResizedCrop", size_key: config.image_size},
             {"type": "RandomFlip", flip_key: 0.5, "direction": "horizontal"}]
    if (ra := _randaugment(config)) is not None:
        steps.append(ra)
    return steps


def _export_workers(config: TrialConfig) -> int:
    """Loader processes for mmcls/mmpretrain: the trial's own count (auto: 2, their default),
    never fewer than 2 (their loaders decode JPEGs each epoch; sweeper's read a decoded cache)."""
    return max(config.num_workers if isinstance(config.num_workers, int) else 2, 2)


def _header(config: TrialConfig, value: float | None, notes: list[str], how: str) -> list[str]:
    score = f": {config.objective} {value:.4f}" if value is not None else ""
    if config.schedule_preset:
        notes = [f"schedule {config.schedule_preset} (MMDetection's) for {config.epochs} epochs is "
                 f"the step schedule at {config.milestones}, gamma {config.gamma}", *notes]
    return ([f"{config.model}, trial {config.number} of sweeper study {config.study!r}{score}",
             f"searched: {config.params}", how] + [f"NOTE: {n}" for n in notes])


def _optimizer(config: TrialConfig) -> dict[str, Any]:
    if config.optimizer == "sgd":
        opt = {"type": "SGD", "lr": config.scaled_lr, "momentum": config.momentum,
               "weight_decay": config.weight_decay, "nesterov": config.nesterov}
    else:
        opt = {"type": "AdamW", "lr": config.scaled_lr, "weight_decay": config.weight_decay}
    if config.backbone_lr_mult != 1.0:
        opt["paramwise_cfg"] = {"custom_keys": {"backbone": {"lr_mult": config.backbone_lr_mult}}}
    return opt


def _datasets(config: TrialConfig, files: SideFiles, root_key: str) -> tuple[dict, dict, list[str]]:
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


def mmcls_config(config: TrialConfig, classes: list[str], value: float | None = None,
                 files: SideFiles = SideFiles()) -> str:
    backbone, channels, notes = _backbone(config, files)
    train_src, val_src, data_notes = _datasets(config, files, "data_prefix")
    notes += data_notes
    size = config.image_size
    norm = {"mean": [round(m * 255, 3) for m in config.mean],
            "std": [round(s * 255, 3) for s in config.std], "to_rgb": True}
    center_crop = [{"type": "Resize", "size": (int(size / CROP_RATIO), -1)},
                   {"type": "CenterCrop", "crop_size": size}]
    train_aug = _train_aug(config, center_crop, "size", "flip_prob")
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
    optimizer = _optimizer(config)
    paramwise = optimizer.pop("paramwise_cfg", None)
    header = _header(config, value, notes, "MMClassification 0.x: python tools/train.py THIS_FILE")
    return _render(header, [
        ("model", {"type": "ImageClassifier", "backbone": backbone,
                   "neck": {"type": "GlobalAveragePooling"},
                   "head": _head(config, classes, channels, files)}),
        ("img_norm_cfg", norm),
        ("train_pipeline", train_pipeline),
        ("test_pipeline", test_pipeline),
        ("data", {"samples_per_gpu": config.batch_size, "workers_per_gpu": _export_workers(config),
                  "train_dataloader": {"drop_last": files.drop_last},
                  "train": {"type": "CustomDataset", **train_src, "classes": classes,
                            "pipeline": train_pipeline},
                  "val": val_set, "test": val_set}),
        ("evaluation", {"interval": 1, "metric": "accuracy", "metric_options": {"topk": (1, min(5, len(classes)))}}),
        ("optimizer", {**optimizer, **({"paramwise_cfg": paramwise} if paramwise else {})}),
        ("optimizer_config", {"grad_clip": None}),
        ("lr_config", lr_config),
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


def mmpretrain_schedulers(config: TrialConfig, iters_per_epoch: int | None,
                          notes: list[str]) -> list[dict[str, Any]]:
    """mmengine param schedulers that give mmcv's lr (see schedule.py) at every iteration."""
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
    from sweeper.schedule import LrSchedule

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
    backbone, channels, notes = _backbone(config, files)
    train_src, val_src, data_notes = _datasets(config, files, "data_root")
    notes += data_notes
    size = config.image_size
    center_crop = [{"type": "ResizeEdge", "scale": int(size / CROP_RATIO), "edge": "short"},
                   {"type": "CenterCrop", "crop_size": size}]
    train_aug = _train_aug(config, center_crop, "scale", "prob")
    test_pipeline = [{"type": "LoadImageFromFile"}, *center_crop, {"type": "PackInputs"}]
    schedulers = mmpretrain_schedulers(config, files.iters_per_epoch, notes)
    optimizer = _optimizer(config)
    paramwise = optimizer.pop("paramwise_cfg", None)
    loader = {"batch_size": config.batch_size, "num_workers": _export_workers(config)}
    val_loader = {**loader, "dataset": {"type": "CustomDataset", **val_src, "classes": classes,
                                        "pipeline": test_pipeline},
                  "sampler": {"type": "DefaultSampler", "shuffle": False}}
    topk = (1, min(5, len(classes)))
    header = _header(config, value, notes, "MMPretrain 1.x: python tools/train.py THIS_FILE")
    return _render(header, [
        ("default_scope", "mmpretrain"),
        ("model", {"type": "ImageClassifier", "backbone": backbone,
                   "neck": {"type": "GlobalAveragePooling"},
                   "head": _head(config, classes, channels, files)}),
        ("data_preprocessor", {"num_classes": len(classes), "mean": [m * 255 for m in config.mean],
                               "std": [s * 255 for s in config.std], "to_rgb": True}),
        ("train_dataloader", {**loader, "drop_last": files.drop_last,
                              "dataset": {"type": "CustomDataset", **train_src, "classes": classes,
                                          "pipeline": [{"type": "LoadImageFromFile"}, *train_aug,
                                                       {"type": "PackInputs"}]},
                              "sampler": {"type": "DefaultSampler", "shuffle": True}}),
        ("val_dataloader", val_loader),
        ("val_evaluator", {"type": "Accuracy", "topk": topk}),
        ("test_dataloader", val_loader),
        ("test_evaluator", {"type": "Accuracy", "topk": topk}),
        ("optim_wrapper", {"optimizer": optimizer, **({"paramwise_cfg": paramwise} if paramwise else {})}),
        ("param_scheduler", schedulers),
        ("train_cfg", {"by_epoch": True, "max_epochs": config.epochs, "val_interval": 1}),
        ("val_cfg", {}),
        ("test_cfg", {}),
        # the optimizer's lr is already the trial's (scaled from base_batch_size by sweeper);
        # enabling this would scale it a second time
        ("auto_scale_lr", {"base_batch_size": config.batch_size, "enable": False}),
        ("randomness", {"seed": config.seed}),
    ])


def yaml_space(config: TrialConfig, value: float | None = None) -> str:
    """A search-space file with every knob fixed at this trial's values (`sweeper run` retrains it)."""
    doc: dict[str, Any] = {"study": f"{config.study}-trial{config.number}"}
    data: dict[str, Any] = {"root": config.data_root} if config.data_root else {"builtin": config.data_builtin}
    data.update({"val_fraction": config.val_fraction, "num_workers": config.num_workers})
    doc["data"] = data
    for knob in KNOBS:
        node = doc
        for key in knob.path[:-1]:
            node = node.setdefault(key, {})
        node[knob.path[-1]] = getattr(config, knob.name)
    ops = config.augment_ops
    if config.augment not in ("none", "flip_crop"):
        doc["augment_policies"] = {config.augment: list(ops or [])}
    doc["search"] = {"n_trials": 1, "sampler": "random", "pruner": "none",
                     "objective": config.objective, "value": config.value}
    head = (f"# trial {config.number} of study {config.study!r}"
            + (f" ({config.objective} {value:.4f})" if value is not None else "")
            + ", every knob fixed: sweeper run --space THIS_FILE\n")
    return head + yaml.safe_dump(doc, sort_keys=False)


def default_filename(config: TrialConfig, fmt: str) -> str:
    """OpenMMLab naming, {model}_{gpus}xb{batch}-{details}_{data}, e.g.
    resnet50_1xb64-frozen2-step20-40-60_caltech.py"""
    details = [f"frozen{config.frozen_stages}"] if config.frozen_stages >= 0 else []
    if config.schedule == "step":
        details.append("step" + "-".join(str(m) for m in config.milestones))
    else:
        details.append("cosine")
    data = Path(config.data_root).name if config.data_root else config.data_builtin
    stem = f"{config.model}_1xb{config.batch_size}-{'-'.join(details)}_{data}"
    return stem + (".yaml" if fmt == "yaml" else ".py")


def guess_format(path: Path) -> str:
    return "yaml" if path.suffix in (".yaml", ".yml") else "mmcls"


def render(config: TrialConfig, classes: list[str], fmt: str, value: float | None = None,
           files: SideFiles = SideFiles()) -> str:
    if fmt == "mmcls":
        return mmcls_config(config, classes, value, files)
    if fmt == "mmpretrain":
        return mmpretrain_config(config, classes, value, files)
    return yaml_space(config, value)


def write(config: TrialConfig, classes: list[str], fmt: str, target: Path,
          value: float | None = None, train_images: int | None = None) -> list[Path]:
    """Write the export and, for mmcls / mmpretrain, the files it reads beside it: the starting
    weights (`<name>.init.pth`) and a val_fraction split's file lists (`<name>.train.txt`, ...).
    Returns the paths written, the config first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "yaml":
        target.write_text(yaml_space(config, value))
        return [target]
    from sweeper.loading import drops_last_batch, iters_per_epoch  # deferred: imports torch

    written: list[Path] = []
    stem = target.with_suffix("")
    init, with_head = None, False
    if config.pretrained:
        init, with_head = _write_init_weights(config, len(classes), Path(f"{stem}.init.pth"))
        written.append(init)
    train_ann = val_ann = None
    split = _split_lists(config)
    if split is not None:
        train_ann, val_ann = Path(f"{stem}.train.txt"), Path(f"{stem}.val.txt")
        for path, items in ((train_ann, split["train"]), (val_ann, split["val"])):
            path.write_text("".join(f"{rel} {label}\n" for rel, label in items))
            written.append(path)
    files = SideFiles(
        init_checkpoint=str(init.resolve()) if init else None, head_in_checkpoint=with_head,
        train_ann=str(train_ann.resolve()) if train_ann else None,
        val_ann=str(val_ann.resolve()) if val_ann else None,
        drop_last=drops_last_batch(train_images, config.batch_size) if train_images else True,
        iters_per_epoch=iters_per_epoch(train_images, config.batch_size) if train_images else None)
    target.write_text(render(config, classes, fmt, value, files))
    return [target, *written]


def _write_init_weights(config: TrialConfig, num_classes: int, path: Path) -> tuple[Path, bool]:
    """The weights the trial started from (hub or local checkpoint), under mmcls keys."""
    import torch

    from sweeper import model as models

    model, with_head = models.create_with_head(config.model, num_classes, config.pretrained)
    state = models.openmmlab_state(model, native_backbone(config.model), with_head)
    torch.save({"state_dict": state, "meta": {"source": str(config.pretrained),
                                              "model": config.model}}, path)
    return path, with_head


def _split_lists(config: TrialConfig) -> dict | None:
    """The train/val file lists of a val_fraction split, as the sweep made them."""
    if not config.data_root or (Path(config.data_root) / "train").is_dir():
        return None
    import json

    from sweeper import data as datasets

    recorded = datasets.split_path(Path(config.data_cache))
    if recorded.is_file():
        return json.loads(recorded.read_text())
    listing = datasets.list_folder(Path(config.data_root), config.val_fraction)
    rel = lambda items: [[str(Path(p).relative_to(config.data_root)), y] for p, y in items]  # noqa: E731
    return {"train": rel(listing.train), "val": rel(listing.val)}
