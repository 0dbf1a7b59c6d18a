"""Writing an export: its OpenMMLab file name, the format by suffix, and the files an mmcls /
mmpretrain config reads beside it (the starting weights, a val_fraction split's file lists)."""

from __future__ import annotations

import re
from pathlib import Path

from sweeper.analyze.export.common import SideFiles, native_backbone
from sweeper.analyze.export.mmcls import mmcls_config
from sweeper.analyze.export.mmpretrain import mmpretrain_config
from sweeper.analyze.export.yaml_space import yaml_space
from sweeper.spec.trial_config import TrialConfig

FORMATS = ("mmcls", "mmpretrain", "yaml")


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
    # a file in the export folder, whatever the names in the config say (no separator, no dot first)
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", stem).lstrip(".") + (".yaml" if fmt == "yaml" else ".py")


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
    from sweeper.data.loading import (  # deferred: imports torch
        drops_last_batch,
        iters_per_epoch,
    )

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

    from sweeper.train import model as models

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

    from sweeper.data import datasets

    recorded = datasets.split_path(Path(config.data_cache))
    if recorded.is_file():
        return json.loads(recorded.read_text())
    listing = datasets.list_folder(Path(config.data_root), config.val_fraction)
    rel = lambda items: [[str(Path(p).relative_to(config.data_root)), y] for p, y in items]  # noqa: E731
    return {"train": rel(listing.train), "val": rel(listing.val)}


def export_trial(trial, study: str, export: str, fmt: str | None, files) -> tuple[str, list[Path]]:
    """`best --export`: the trial's saved config written to a file, or into a folder (a path that
    is one or ends in /) under its OpenMMLab name. Returns the format and the paths written."""
    from sweeper.errors import StorageError
    from sweeper.sweep.recovery import IMPORTED

    if imported := trial.user_attrs.get(IMPORTED):
        raise StorageError(f"trial {trial.number} was imported from {imported}, so sweeper has "
                           f"no trained config to export; `sweeper recheck --study {study}` "
                           "trains it (then export again)")
    text = files.read(trial, "config.json")
    if text is None:
        raise StorageError(f"the best trial's config.json is missing from {files.where(trial)}; "
                           "was trials/ moved? (or pass --artifacts where the sweep stored it)")
    config = TrialConfig.from_json(text.decode())
    is_dir = Path(export).is_dir() or export.endswith(("/", "\\"))
    fmt = fmt or (guess_format(Path(export)) if not is_dir else "mmcls")
    target = Path(export) / default_filename(config, fmt) if is_dir else Path(export)
    paths = write(config, trial.user_attrs.get("classes") or [], fmt, target, trial.value,
                  trial.user_attrs.get("train_images"))
    return fmt, paths
