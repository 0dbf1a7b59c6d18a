"""Exported configs: literals only, loadable by mmengine, holding the trial's values under mmcls names."""

from __future__ import annotations

import ast
import json

import pytest

from sweeper.analyze import export
from sweeper.spec.sweep_spec import parse_spec
from sweeper.spec.trial_config import resolve
from sweeper.testing import tiny_space

mmengine = pytest.importorskip("mmengine")
CLASSES = ["cat", "dog", "eel"]


def _config(tmp_path, **train):
    doc = tiny_space(tmp_path / "caltech", model={"name": "resnet50", "frozen_stages": 2},
                     train={"epochs": 100, "schedule": "step", "milestones": [20, 40, 60],
                            "warmup": {"type": "linear", "iters": 500, "ratio": 0.001},
                            "augment": "swin_randaug", "label_smoothing": 0.1,
                            "lr_scaling": {"rule": "linear", "base_batch_size": 64}, **train},
                     space={"batch_size": [32, 64]})
    (tmp_path / "caltech" / "train").mkdir(parents=True, exist_ok=True)
    return resolve(parse_spec(doc), 7, {"batch_size": 64, "lr": 0.1}, tmp_path / "trials", tmp_path / "c.pt")


def _load(tmp_path, text: str):
    path = tmp_path / "exported.py"
    path.write_text(text)
    return mmengine.Config.fromfile(str(path))


def _assert_literals_only(text: str) -> None:
    for node in ast.parse(text).body:
        assert isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name), ast.dump(node)
        ast.literal_eval(node.value)  # raises on any call, name or expression


def test_mmcls_export_holds_the_trial_under_mmcls_keys(tmp_path):
    config = _config(tmp_path, lr=0.1)
    text = export.mmcls_config(config, CLASSES, 0.9)
    _assert_literals_only(text)
    cfg = _load(tmp_path, text)
    assert cfg.model.backbone.type == "ResNet" and cfg.model.backbone.depth == 50
    assert cfg.model.backbone.frozen_stages == 2
    assert cfg.model.head.num_classes == 3 and cfg.model.head.in_channels == 2048
    assert cfg.model.head.loss.label_smooth_val == 0.1
    assert cfg.data.samples_per_gpu == 64
    assert cfg.data.train.classes == CLASSES
    assert cfg.optimizer.type == "SGD" and cfg.optimizer.lr == pytest.approx(config.scaled_lr)
    assert cfg.lr_config.policy == "step" and cfg.lr_config.step == [20, 40, 60]
    assert (cfg.lr_config.warmup, cfg.lr_config.warmup_iters, cfg.lr_config.warmup_ratio) == \
        ("linear", 500, 0.001)
    assert cfg.runner.max_epochs == 100
    randaug = [t for t in cfg.data.train.pipeline if t.type == "RandAugment"][0]
    assert {p["type"] for p in randaug.policies} >= {"AutoContrast", "SolarizeAdd", "ColorTransform",
                                                    "Shear", "Translate"}
    assert randaug.num_policies == 2 and randaug.magnitude_level == 9
    # the fill and interpolation the trial's RandAugment used; BGR, as mmcls's images are there
    assert randaug.hparams == {"pad_val": [104, 116, 124], "interpolation": "bicubic"}
    assert cfg.evaluation.metric == "accuracy"
    assert cfg.data.train_dataloader.drop_last is True
    assert "init_cfg" not in cfg.model.backbone  # trained from scratch


def test_mmpretrain_export_uses_1x_names(tmp_path):
    config = _config(tmp_path, lr=0.1)
    text = export.mmpretrain_config(config, CLASSES)
    _assert_literals_only(text)
    cfg = _load(tmp_path, text)
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(config.scaled_lr)
    assert [s["type"] for s in cfg.param_scheduler] == ["LinearLR", "MultiStepLR"]
    # mmengine ends a warmup one iteration before `end`; mmcv at warmup_iters
    assert cfg.param_scheduler[0]["end"] == 501 and cfg.param_scheduler[1]["milestones"] == [20, 40, 60]
    assert cfg.train_dataloader.batch_size == 64
    assert cfg.train_cfg.max_epochs == 100
    assert cfg.auto_scale_lr == {"base_batch_size": 64, "enable": False}  # lr is scaled already
    assert cfg.train_dataloader.drop_last is True
    randaug = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == "RandAugment"][0]
    assert randaug.policies[4] == {"type": "Posterize", "magnitude_key": "bits", "magnitude_range": (4, 0)}


def test_a_model_mmcls_lacks_is_wrapped_with_a_note(tmp_path):
    config = _config(tmp_path, lr=0.1)
    config = type(config)(**{**config.__dict__, "model": "convnext_atto", "schedule": "cosine"})
    text = export.mmcls_config(config, CLASSES)
    cfg = _load(tmp_path, text)
    assert cfg.model.backbone.type == "TIMMBackbone" and cfg.model.backbone.model_name == "convnext_atto"
    assert cfg.model.head.in_channels == 320  # convnext_atto's feature width
    assert "# NOTE: timm model 'convnext_atto' has no native mmcls backbone" in text
    assert "frozen_stages=2 does not map" in text
    assert cfg.lr_config.policy == "CosineAnnealing"


def test_default_file_name_follows_the_openmmlab_convention(tmp_path):
    assert export.default_filename(_config(tmp_path, lr=0.1), "mmcls") == \
        "resnet50_1xb64-frozen2-step20-40-60_caltech.py"


def test_normalisation_comes_from_the_models_timm_config(tmp_path):
    config = _config(tmp_path, lr=0.1)
    config = type(config)(**{**config.__dict__, "model": "test_resnet"})
    # resolve() took test_resnet's from timm; check it is not ImageNet's here
    resolved = resolve(parse_spec(tiny_space(tmp_path, space=None)), 0, {}, tmp_path, tmp_path / "c.pt")
    assert resolved.model == "test_resnet" and list(resolved.mean) == [0.5, 0.5, 0.5]
    config = type(config)(**{**config.__dict__, "mean": resolved.mean, "std": resolved.std})
    mmcls = _load(tmp_path, export.mmcls_config(config, CLASSES))
    assert mmcls.img_norm_cfg.mean == [127.5] * 3 and mmcls.img_norm_cfg.std == [127.5] * 3
    pretrain = _load(tmp_path, export.mmpretrain_config(config, CLASSES))
    assert pretrain.data_preprocessor.mean == [127.5] * 3


def test_a_val_fraction_split_is_exported_as_the_file_lists_the_sweep_used(tmp_path):
    """mmcls reads the same split through `ann_file` (lines `path label` under the root)."""
    from sweeper.data import datasets
    from sweeper.testing import make_image_folder

    root = make_image_folder(tmp_path / "flat", classes=3, per_class=10, split=False)
    cache = datasets.prepare(datasets.Source(str(root), None, 0.3), 16, tmp_path / "cache")
    listing = datasets.list_folder(root, 0.3)
    doc = tiny_space(root, data={"root": str(root), "image_size": 16, "val_fraction": 0.3}, space=None)
    config = resolve(parse_spec(doc), 0, {}, tmp_path / "trials", cache)
    classes = listing.classes
    for fmt, key in (("mmcls", "data_prefix"), ("mmpretrain", "data_root")):
        target = tmp_path / fmt / "exported.py"
        written = export.write(config, classes, fmt, target, None, len(listing.train))
        cfg = _load(tmp_path, target.read_text())
        train = cfg.data.train if fmt == "mmcls" else cfg.train_dataloader.dataset
        val = cfg.data.val if fmt == "mmcls" else cfg.val_dataloader.dataset
        assert train[key] == val[key] == str(root)
        for dataset, items in ((train, listing.train), (val, listing.val)):
            lines = open(dataset.ann_file).read().splitlines()
            assert dataset.ann_file in {str(p.resolve()) for p in written}
            parsed = [(str(root / line.rsplit(" ", 1)[0]), int(line.rsplit(" ", 1)[1])) for line in lines]
            assert parsed == items
            assert all(classes[label] in path for path, label in parsed)
        assert "cannot read" not in target.read_text()


def test_fp16_and_bf16_are_exported_as_openmmlab_mixed_precision(tmp_path):
    import inspect

    import torch
    from mmengine.optim import AmpOptimWrapper
    from mmengine.registry import OPTIM_WRAPPERS

    fp16 = _config(tmp_path, lr=0.1, precision="fp16")
    # mmcls 0.x: configs/resnet/resnet50_8xb32-fp16-dynamic_in1k.py has fp16 = dict(loss_scale='dynamic')
    assert _load(tmp_path, export.mmcls_config(fp16, CLASSES, 0.9)).fp16 == {"loss_scale": "dynamic"}
    wrapper = _load(tmp_path, export.mmpretrain_config(fp16, CLASSES)).optim_wrapper
    assert OPTIM_WRAPPERS.get(wrapper.type) is AmpOptimWrapper
    accepted = inspect.signature(AmpOptimWrapper.__init__).parameters
    assert {k for k in wrapper if k not in ("type", "optimizer", "paramwise_cfg")} <= set(accepted)
    assert wrapper.loss_scale == "dynamic" and "dtype" not in wrapper  # mmengine's default: float16
    bf16 = _config(tmp_path, lr=0.1, precision="bf16")
    wrapper = _load(tmp_path, export.mmpretrain_config(bf16, CLASSES)).optim_wrapper
    assert wrapper.type == "AmpOptimWrapper" and getattr(torch, wrapper.dtype) is torch.bfloat16
    text = export.mmcls_config(bf16, CLASSES, 0.9)
    assert "fp16" not in _load(tmp_path, text) and "mmcls 0.x trains in fp16 or fp32 only" in text
    auto = _config(tmp_path, lr=0.1, precision="auto")  # precision auto: the export trains in fp32 and says so
    text = export.mmpretrain_config(auto, CLASSES)
    assert "type" not in _load(tmp_path, text).optim_wrapper and "precision was auto" in text


def _tampered_study(tmp_path, **changes) -> str:
    """A study whose best trial's config.json says `changes` (whoever can write trials/ can)."""
    import optuna

    storage = f"sqlite:///{tmp_path}/studies.db"
    study = optuna.create_study(study_name="tampered", storage=storage, direction="maximize")
    study.set_user_attr("objective", "val_acc")
    trial_dir = tmp_path / "trials" / "tampered" / "0"
    trial_dir.mkdir(parents=True)
    text = json.dumps({**json.loads(_config(tmp_path).to_json()), **changes})
    (trial_dir / "config.json").write_text(text)
    study.add_trial(optuna.trial.create_trial(
        value=0.9, params={"lr": 0.1}, distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1.0)},
        user_attrs={"trial_dir": str(trial_dir), "classes": CLASSES}))
    return storage


@pytest.mark.parametrize("key, value", [
    ("schedule_preset", "1x\nopen({marker!r}, 'w').close()"),
    ("model", "resnet50\nopen({marker!r}, 'w').close()"),
    ("model", "../../escaped"),
    ("milestones", "[1]\nopen({marker!r}, 'w').close()"),
])
def test_a_config_json_with_code_or_a_path_in_a_name_is_refused(tmp_path, monkeypatch, key, value):
    from typer.testing import CliRunner

    from sweeper.cli import app

    marker = tmp_path / "MARKER"
    storage = _tampered_study(tmp_path, **{key: value.format(marker=str(marker))})
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["best", "--study", "tampered", "--storage", storage,
                                      "--export", "out/sub/"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "config.json" in errors[0] and key in errors[0], result.output
    assert "Traceback" not in result.output
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert not any(str(p).startswith(("out", "escaped")) for p in written), written
    assert not marker.exists()


def test_strings_of_a_valid_config_stay_inside_comments_and_literals(tmp_path):
    import dataclasses

    marker = tmp_path / "MARKER"
    statement = f"\nopen({str(marker)!r}, 'w').close()\n"
    config = dataclasses.replace(_config(tmp_path), pretrained=f"/weights/x.pth{statement}",
                                 data_root=f"/data/a{statement}/caltech{statement}")
    for text in (export.mmcls_config(config, CLASSES, 0.9, export.SideFiles(init_checkpoint="/tmp/i.pth")),
                 export.mmpretrain_config(config, CLASSES, 0.9, export.SideFiles(init_checkpoint="/tmp/i.pth"))):
        _assert_literals_only(text)
        _load(tmp_path, text)
        assert not marker.exists()
    name = export.default_filename(config, "mmcls")
    assert "/" not in name and "\n" not in name and not name.startswith(".")
