"""Models: timm by name, pretrained from the hub or a local file, mmcls-style frozen stages."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.models import group_modules
from torch import nn

from sweeper.errors import WorkerError


def _read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """A plain state_dict, or one under 'state_dict'/'model' (timm, mmcls, torchvision)."""
    state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _from_openmmlab(state: dict[str, torch.Tensor], classifier: str) -> dict[str, torch.Tensor]:
    """mmcls / mmpretrain ImageClassifier keys -> timm's.

    Their ResNet names its layers as torchvision and timm do (conv1, bn1, layerN.i.downsample.0),
    under `backbone.`; a TIMMBackbone adds `timm_model.`; LinearClsHead's layer is `head.fc`.
    The neck (global pooling) and data preprocessor hold nothing to load.
    """
    out = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            out[key.removeprefix("backbone.").removeprefix("timm_model.")] = value
        elif key.startswith("head.fc."):
            out[f"{classifier}.{key.removeprefix('head.fc.')}"] = value
    return out


def load_checkpoint(model: nn.Module, path: str) -> bool:
    """Load a backbone checkpoint (timm, torchvision, mmcls or mmpretrain; `module.` prefixes
    too); a head of another class count is left fresh. Returns whether the head was loaded."""
    try:
        state = _read_checkpoint(path)
    except Exception as exc:
        raise WorkerError(f"cannot load checkpoint {path}: {exc}") from None
    classifier = _classifier_name(model)
    if any(k.startswith("backbone.") for k in state):
        state = _from_openmmlab(state, classifier)
    own = model.state_dict()
    head = {n for n, _ in model.get_classifier().named_parameters(prefix=classifier)}
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if any(k not in head for k in skipped):
        bad = [k for k in skipped if k not in head][:3]
        raise WorkerError(f"checkpoint {path} does not fit {type(model).__name__}: shapes differ "
                          f"at {', '.join(bad)}; is it for another architecture?")
    usable = {k: v for k, v in state.items() if k in own and k not in skipped}
    missing = [k for k in own if k not in usable and k not in head
               and not k.endswith("num_batches_tracked")]
    if missing:
        raise WorkerError(f"checkpoint {path} lacks {len(missing)} tensors of the model "
                          f"(e.g. {', '.join(missing[:3])}); is it for another architecture?")
    model.load_state_dict(usable, strict=False)
    return bool(head) and head <= usable.keys()


def _classifier_name(model: nn.Module) -> str:
    head = model.get_classifier()
    return next(name for name, m in model.named_modules() if m is head)


def create(name: str, num_classes: int, pretrained: bool | str, drop_path_rate: float = 0.0) -> nn.Module:
    """timm model with a fresh `num_classes` head; `pretrained` is True (hub), False or a path."""
    return create_with_head(name, num_classes, pretrained, drop_path_rate)[0]


def create_with_head(name: str, num_classes: int, pretrained: bool | str,
                     drop_path_rate: float = 0.0) -> tuple[nn.Module, bool]:
    """`create`, and whether the head came from the pretrained weights (same class count)."""
    if pretrained is True:
        try:
            model = _timm_model(name, num_classes, True, drop_path_rate)
        except WorkerError:
            raise
        except Exception as exc:
            raise WorkerError(
                f"could not fetch timm hub weights for {name} ({type(exc).__name__}: {exc}); "
                f"without internet, download them elsewhere and set model.pretrained: "
                f"path/to/{name}.pth") from None
        return model, model.pretrained_cfg.get("num_classes") == num_classes
    model = _timm_model(name, num_classes, False, drop_path_rate)
    if isinstance(pretrained, str):
        return model, load_checkpoint(model, pretrained)
    return model, False


def _timm_model(name: str, num_classes: int, hub_weights: bool, drop_path_rate: float) -> nn.Module:
    # timm's stochastic depth, passed only when set: not every timm model takes the argument
    extra = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    try:
        return timm.create_model(name, pretrained=hub_weights, num_classes=num_classes, **extra)
    except TypeError as exc:
        if not extra:
            raise
        raise WorkerError(f"timm model {name} has no stochastic depth ({exc}); "
                          "leave model.drop_path_rate at 0") from None


def openmmlab_state(model: nn.Module, native_backbone: bool, with_head: bool) -> dict[str, torch.Tensor]:
    """The model's weights under mmcls / mmpretrain ImageClassifier keys: `backbone.` for their
    own ResNet (whose names match timm's), `backbone.timm_model.` for a TIMMBackbone, and
    `head.fc.` for a linear head when `with_head`."""
    classifier = _classifier_name(model)
    linear_head = isinstance(model.get_classifier(), nn.Linear)
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith(classifier + "."):
            if with_head and linear_head:
                out["head.fc." + key.removeprefix(classifier + ".")] = value
        else:
            out[("backbone." if native_backbone else "backbone.timm_model.") + key] = value
    return out


def stage_groups(model: nn.Module) -> list[list[str]]:
    """Module names per group: [stem, stage 1, ..., stage n, head], from timm's group matcher."""
    try:
        matcher = model.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError):
        raise WorkerError(f"{type(model).__name__} has no timm group matcher, so frozen_stages "
                          "cannot be applied; use frozen_stages: -1") from None
    groups = group_modules(model, matcher)
    return [groups[k] for k in sorted(groups)]


def freeze_stages(model: nn.Module, frozen_stages: int) -> list[nn.Module]:
    """mmcls semantics: -1 freezes nothing; k >= 0 freezes the stem and stages 1..k.

    Returns the frozen modules, which `train_mode` keeps in eval mode (BatchNorm statistics).
    """
    if frozen_stages < 0:
        return []
    groups = stage_groups(model)
    n_stages = len(groups) - 2
    if frozen_stages > n_stages:
        raise WorkerError(f"frozen_stages={frozen_stages}, but this model has {n_stages} stages; "
                          f"use -1..{n_stages}")
    frozen = [model.get_submodule(name) for group in groups[: frozen_stages + 1] for name in group]
    frozen_params = {id(p) for m in frozen for p in m.parameters()}
    for p in model.parameters():
        if id(p) in frozen_params:
            p.requires_grad_(False)
    return frozen


def train_mode(model: nn.Module, frozen: list[nn.Module]) -> None:
    """model.train(), but frozen parts stay in eval mode so BatchNorm running stats stay fixed."""
    model.train()
    for m in frozen:
        m.eval()


def param_groups(model: nn.Module, lr: float, backbone_lr_mult: float) -> list[dict]:
    """Head at lr, every other trainable parameter at lr x backbone_lr_mult; `base_lr` is the
    group's lr before the schedule (mmcv's per-group base_lr)."""
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    head = [p for p in trainable if id(p) in head_ids]
    backbone = [p for p in trainable if id(p) not in head_ids]
    groups = [{"params": head, "lr": lr, "base_lr": lr}]
    if backbone:
        groups.append({"params": backbone, "lr": lr * backbone_lr_mult, "base_lr": lr * backbone_lr_mult})
    return groups
