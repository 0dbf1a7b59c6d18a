"""A trial's resolved config -> an mmcls 0.x config, an mmpretrain 1.x config, or a fixed YAML space.

The Python configs hold literals only (dicts, lists, tuples, numbers, strings): no imports, no
calls, so `ast.literal_eval` reads every value and loading one runs no code of ours.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from sweeper.augment import CROP_RATIO, MEAN, STD
from sweeper.knobs import KNOBS
from sweeper.trial_config import TrialConfig

FORMATS = ("mmcls", "mmpretrain", "yaml")

# mmcls's RandAugment policies (configs/_base_/datasets/pipelines/rand_aug.py), by op name.
_MMCLS_POLICIES: dict[str, list[dict[str, Any]]] = {
    "AutoContrast": [{"type": "AutoContrast"}],
    "Equalize": [{"type": "Equalize"}],
    "Invert": [{"type": "Invert"}],
    "Rotate": [{"type": "Rotate", "magnitude_key": "angle", "magnitude_range": (0, 30)}],
    "Posterize": [{"type": "Posterize", "magnitude_key": "bits", "magnitude_range": (4, 0)}],
    "Solarize": [{"type": "Solarize", "magnitude_key": "thr", "magnitude_range": (256, 0)}],
    "SolarizeAdd": [{"type": "SolarizeAdd", "magnitude_key": "magnitude", "magnitude_range": (0, 110)}],
    "ColorTransform": [{"type": "ColorTransform", "magnitude_key": "magnitude", "magnitude_range": (0, 0.9)}],
    "Contrast": [{"type": "Contrast", "magnitude_key": "magnitude", "magnitude_range": (0, 0.9)}],
    "Brightness": [{"type": "Brightness", "magnitude_key": "magnitude", "magnitude_range": (0, 0.9)}],
    "Sharpness": [{"type": "Sharpness", "magnitude_key": "magnitude", "magnitude_range": (0, 0.9)}],
    "Shear": [{"type": "Shear", "magnitude_key": "magnitude", "magnitude_range": (0, 0.3),
               "direction": d} for d in ("horizontal", "vertical")],
    "Translate": [{"type": "Translate", "magnitude_key": "magnitude", "magnitude_range": (0, 0.45),
                   "direction": d} for d in ("horizontal", "vertical")],
}
_RESNET = re.compile(r"^resnet(18|34|50|101|152)$")


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


def _backbone(config: TrialConfig) -> tuple[dict[str, Any], int, list[str]]:
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
    if config.pretrained is True:
        if match:
            backbone["init_cfg"] = {"type": "Pretrained", "checkpoint": f"torchvision://{config.model}"}
            notes.append("trained from timm hub weights; torchvision's ImageNet weights stand in here")
        else:
            backbone["pretrained"] = True
    elif isinstance(config.pretrained, str):
        backbone["init_cfg"] = {"type": "Pretrained", "checkpoint": config.pretrained}
    return backbone, channels, notes


def _loss(config: TrialConfig) -> dict[str, Any]:
    if config.label_smoothing > 0:
        return {"type": "LabelSmoothLoss", "label_smooth_val": config.label_smoothing,
                "mode": "original", "loss_weight": 1.0}
    return {"type": "CrossEntropyLoss", "loss_weight": 1.0}


def _randaugment(config: TrialConfig) -> dict[str, Any] | None:
    if not config.augment_ops:
        return None
    return {"type": "RandAugment",
            "policies": [p for op in config.augment_ops for p in _MMCLS_POLICIES[op]],
            "num_policies": config.num_ops, "total_level": 10,
            "magnitude_level": config.magnitude, "magnitude_std": config.magnitude_std}


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


def _header(config: TrialConfig, value: float | None, notes: list[str], how: str) -> list[str]:
    score = f": {config.objective} {value:.4f}" if value is not None else ""
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


def _data_dirs(config: TrialConfig) -> tuple[str, str, list[str]]:
    notes = []
    if config.data_root and (Path(config.data_root) / "train").is_dir():
        return str(Path(config.data_root) / "train"), str(Path(config.data_root) / "val"), notes
    root = config.data_root or f"data/{config.data_builtin}"
    notes.append(f"the sweep split {root} by val_fraction={config.val_fraction}; mmcls needs "
                 "the split on disk as train/ and val/ folders")
    return f"{root}/train", f"{root}/val", notes


def mmcls_config(config: TrialConfig, classes: list[str], value: float | None = None) -> str:
    backbone, channels, notes = _backbone(config)
    train_dir, val_dir, data_notes = _data_dirs(config)
    notes += data_notes
    size = config.image_size
    norm = {"mean": [round(m * 255, 3) for m in MEAN], "std": [round(s * 255, 3) for s in STD],
            "to_rgb": True}
    train_aug = _train_aug(config, [{"type": "Resize", "size": (int(size / CROP_RATIO), -1)},
                                    {"type": "CenterCrop", "crop_size": size}], "size", "flip_prob")
    train_pipeline = [{"type": "LoadImageFromFile"}, *train_aug,
                      {"type": "Normalize", **norm}, {"type": "ImageToTensor", "keys": ["img"]},
                      {"type": "ToTensor", "keys": ["gt_label"]},
                      {"type": "Collect", "keys": ["img", "gt_label"]}]
    test_pipeline = [{"type": "LoadImageFromFile"},
                     {"type": "Resize", "size": (int(size / CROP_RATIO), -1)},
                     {"type": "CenterCrop", "crop_size": size},
                     {"type": "Normalize", **norm}, {"type": "ImageToTensor", "keys": ["img"]},
                     {"type": "Collect", "keys": ["img"]}]
    val_set = {"type": "CustomDataset", "data_prefix": val_dir, "classes": classes,
               "pipeline": test_pipeline}
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
    head = {"type": "LinearClsHead", "num_classes": len(classes), "in_channels": channels,
            "loss": _loss(config), "topk": (1, min(5, len(classes)))}
    header = _header(config, value, notes, "MMClassification 0.x: python tools/train.py THIS_FILE")
    return _render(header, [
        ("model", {"type": "ImageClassifier", "backbone": backbone,
                   "neck": {"type": "GlobalAveragePooling"}, "head": head}),
        ("img_norm_cfg", norm),
        ("train_pipeline", train_pipeline),
        ("test_pipeline", test_pipeline),
        ("data", {"samples_per_gpu": config.batch_size, "workers_per_gpu": max(config.num_workers, 2),
                  "train": {"type": "CustomDataset", "data_prefix": train_dir, "classes": classes,
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


def mmpretrain_config(config: TrialConfig, classes: list[str], value: float | None = None) -> str:
    backbone, channels, notes = _backbone(config)
    train_dir, val_dir, data_notes = _data_dirs(config)
    notes += data_notes
    size = config.image_size
    train_aug = _train_aug(config, [{"type": "ResizeEdge", "scale": int(size / CROP_RATIO), "edge": "short"},
                                    {"type": "CenterCrop", "crop_size": size}], "scale", "prob")
    test_pipeline = [{"type": "LoadImageFromFile"},
                     {"type": "ResizeEdge", "scale": int(size / CROP_RATIO), "edge": "short"},
                     {"type": "CenterCrop", "crop_size": size}, {"type": "PackInputs"}]
    warmup_iters = config.warmup_iters or 0
    schedulers: list[dict[str, Any]] = []
    if config.warmup != "none":
        if config.warmup == "exp":
            notes.append("exp warmup has no mmengine scheduler; LinearLR stands in for it")
        kind = {"constant": {"type": "ConstantLR", "factor": config.warmup_ratio}}.get(
            config.warmup, {"type": "LinearLR", "start_factor": config.warmup_ratio})
        if config.warmup_epochs:
            schedulers.append({**kind, "by_epoch": True, "begin": 0, "end": config.warmup_epochs,
                               "convert_to_iter_based": True})
        else:
            schedulers.append({**kind, "by_epoch": False, "begin": 0, "end": warmup_iters})
    if config.schedule == "step":
        schedulers.append({"type": "MultiStepLR", "by_epoch": True, "milestones": config.milestones,
                           "gamma": config.gamma})
    else:
        schedulers.append({"type": "CosineAnnealingLR", "by_epoch": True, "begin": 0,
                           "end": config.epochs, "eta_min": config.min_lr,
                           "convert_to_iter_based": True})
    optimizer = _optimizer(config)
    paramwise = optimizer.pop("paramwise_cfg", None)
    loader = {"batch_size": config.batch_size, "num_workers": max(config.num_workers, 2)}
    header = _header(config, value, notes, "MMPretrain 1.x: python tools/train.py THIS_FILE")
    return _render(header, [
        ("default_scope", "mmpretrain"),
        ("model", {"type": "ImageClassifier", "backbone": backbone,
                   "neck": {"type": "GlobalAveragePooling"},
                   "head": {"type": "LinearClsHead", "num_classes": len(classes),
                            "in_channels": channels, "loss": _loss(config),
                            "topk": (1, min(5, len(classes)))}}),
        ("data_preprocessor", {"num_classes": len(classes), "mean": [m * 255 for m in MEAN],
                               "std": [s * 255 for s in STD], "to_rgb": True}),
        ("train_dataloader", {**loader,
                              "dataset": {"type": "CustomDataset", "data_root": train_dir,
                                          "classes": classes,
                                          "pipeline": [{"type": "LoadImageFromFile"}, *train_aug,
                                                       {"type": "PackInputs"}]},
                              "sampler": {"type": "DefaultSampler", "shuffle": True}}),
        ("val_dataloader", {**loader,
                            "dataset": {"type": "CustomDataset", "data_root": val_dir,
                                        "classes": classes, "pipeline": test_pipeline},
                            "sampler": {"type": "DefaultSampler", "shuffle": False}}),
        ("val_evaluator", {"type": "Accuracy", "topk": (1, min(5, len(classes)))}),
        ("test_dataloader", {**loader,
                             "dataset": {"type": "CustomDataset", "data_root": val_dir,
                                         "classes": classes, "pipeline": test_pipeline},
                             "sampler": {"type": "DefaultSampler", "shuffle": False}}),
        ("test_evaluator", {"type": "Accuracy", "topk": (1, min(5, len(classes)))}),
        ("optim_wrapper", {"optimizer": optimizer, **({"paramwise_cfg": paramwise} if paramwise else {})}),
        ("param_scheduler", schedulers),
        ("train_cfg", {"by_epoch": True, "max_epochs": config.epochs, "val_interval": 1}),
        ("val_cfg", {}),
        ("test_cfg", {}),
        ("auto_scale_lr", {"base_batch_size": config.base_batch_size,
                           "enable": config.lr_scaling == "linear"}),
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
                     "objective": config.objective}
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


def render(config: TrialConfig, classes: list[str], fmt: str, value: float | None = None) -> str:
    if fmt == "mmcls":
        return mmcls_config(config, classes, value)
    if fmt == "mmpretrain":
        return mmpretrain_config(config, classes, value)
    return yaml_space(config, value)
