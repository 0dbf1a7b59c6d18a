"""`model.pretrained: path` loads the checkpoints a user has on disk, and exports hand the same
starting weights to mmcls / mmpretrain.

Checkpoints are made here from tiny timm models in each layout: timm (plain or under
`state_dict`), DataParallel (`module.`), and OpenMMLab's ImageClassifier. The OpenMMLab key
names follow mmcls's own modules: its ResNet builds `conv1`, `bn1` (build_norm_layer's name
for BatchNorm with postfix 1), `layerN.i.{conv,bn}K` and `downsample.0/1`, under `backbone.`;
a TIMMBackbone keeps the timm model as `backbone.timm_model.`; LinearClsHead is `head.fc`.
Loading into mmcls is done by mmengine's own PretrainedInit (mmcv 1.x's works the same way:
strip the prefix, load non-strictly) on modules laid out as mmcls's.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from sweeper.analyze import export
from sweeper.spec.sweep_spec import parse_spec
from sweeper.spec.trial_config import resolve
from sweeper.testing import tiny_space
from sweeper.train import model as models

mmengine = pytest.importorskip("mmengine")
from mmengine.model.weight_init import PretrainedInit  # noqa: E402


def _source(name: str, classes: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    net = timm.create_model(name, num_classes=classes)
    for p in net.parameters():  # far from any fresh initialisation
        p.data.uniform_(-1, 1)
    return {k: v.clone() for k, v in net.state_dict().items()}


def _openmmlab(state, native: bool, head: str = "fc"):
    prefix = "backbone." if native else "backbone.timm_model."
    return {("head.fc." + k.removeprefix(head + ".")) if k.startswith(head + ".") else prefix + k: v
            for k, v in state.items()}


LAYOUTS = {
    "timm plain": lambda s, native: s,
    "timm train.py": lambda s, native: {"state_dict": s, "epoch": 3, "arch": "x"},
    "DataParallel": lambda s, native: {"model": {"module." + k: v for k, v in s.items()}},
    "mmcls / mmpretrain": lambda s, native: {"meta": {"epoch": 12}, "state_dict": _openmmlab(s, native)},
    "mmcls DataParallel": lambda s, native: {"state_dict": {"module." + k: v for k, v in _openmmlab(s, native).items()}},
}


@pytest.mark.parametrize("model_name, native", [("resnet18", True), ("test_resnet", False)])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_checkpoint_layouts_load_the_backbone(tmp_path, layout, model_name, native):
    source = _source(model_name, 7)
    path = tmp_path / "ckpt.pth"
    torch.save(LAYOUTS[layout](source, native), path)
    model, with_head = models.create_with_head(model_name, 3, str(path))  # another class count
    own = model.state_dict()
    backbone = [k for k in source if not k.startswith("fc.")]
    assert all(torch.equal(own[k], source[k]) for k in backbone)
    assert not with_head and own["fc.weight"].shape == (3, own["fc.weight"].shape[1])
    same, with_head = models.create_with_head(model_name, 7, str(path))  # same classes: head too
    assert with_head and torch.equal(same.state_dict()["fc.weight"], source["fc.weight"])


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": _openmmlab(_source("resnet18", 7), True)}, path)
    with pytest.raises(models.WorkerError, match="another architecture"):
        models.create("resnet34", 3, str(path))


class TIMMBackboneShape(nn.Module):
    """mmcls's TIMMBackbone: the timm model as `timm_model`, classifier reset to nothing."""

    def __init__(self, name: str):
        super().__init__()
        self.timm_model = timm.create_model(name, pretrained=False)
        self.timm_model.reset_classifier(0, "")


class HeadShape(nn.Module):
    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.fc = nn.Linear(channels, classes)


def _trial(tmp_path, model_name: str, pretrained: str):
    doc = tiny_space(tmp_path / "data", model={"name": model_name, "pretrained": pretrained},
                     space=None)
    (tmp_path / "data" / "train").mkdir(parents=True, exist_ok=True)
    return resolve(parse_spec(doc), 0, {}, tmp_path / "trials", tmp_path / "c.pt")


@pytest.mark.parametrize("model_name, classes", [("resnet18", 3), ("test_resnet", 3), ("test_resnet", 7)])
def test_exported_config_starts_mmcls_from_the_trials_weights(tmp_path, model_name, classes):
    source = _source(model_name, 7)
    ckpt = tmp_path / "user.pth"
    torch.save({"state_dict": source}, ckpt)
    config = _trial(tmp_path, model_name, str(ckpt))
    target = tmp_path / "out" / "exported.py"
    written = export.write(config, [f"c{i}" for i in range(classes)], "mmcls", target, 0.5, 100)
    cfg = mmengine.Config.fromfile(str(target))
    init = cfg.model.backbone.init_cfg
    assert init.type == "Pretrained" and init.checkpoint in {str(p.resolve()) for p in written}
    if cfg.model.backbone.type == "ResNet":
        # mmcls's ResNet names its layers as timm does, minus the classifier
        backbone = timm.create_model(model_name, num_classes=0)
        own_names = {k: k for k in backbone.state_dict()}
    else:
        backbone = TIMMBackboneShape(model_name)
        own_names = {k: k.removeprefix("timm_model.") for k in backbone.state_dict()}
    PretrainedInit(checkpoint=init.checkpoint, prefix=init.prefix)(backbone)
    loaded = backbone.state_dict()
    assert len(own_names) > 10
    for own, theirs in own_names.items():
        assert torch.equal(loaded[own], source[theirs]), own
    head_init = cfg.model.head.get("init_cfg")
    if classes == 7:  # the checkpoint's head fits: the trial started from it, so does mmcls
        head = HeadShape(cfg.model.head.in_channels, 7)
        PretrainedInit(checkpoint=head_init.checkpoint, prefix=head_init.prefix)(head)
        assert torch.equal(head.fc.weight, source["fc.weight"])
    else:
        assert head_init is None


def _seed_hub_cache(cache, repo: str, state: dict[str, torch.Tensor]) -> None:
    """Lay out a Hugging Face hub cache holding `repo`'s model.safetensors, as a download would."""
    from safetensors.torch import save_file

    folder = cache / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))


@pytest.mark.slow
def test_a_trial_from_hub_weights_exports_those_weights(tmp_path, colour_folder):
    """A real sweep from (cached) timm hub weights; the export starts mmcls from the same ones."""
    import os
    import subprocess
    import sys

    hub = _source("resnet18", 1000)
    _seed_hub_cache(tmp_path / "hub", "timm/resnet18.a1_in1k", hub)
    from sweeper.testing import write_space

    space = write_space(tmp_path / "space.yaml", tiny_space(
        colour_folder, study="hub", model={"name": "resnet18", "pretrained": True},
        train={"epochs": 1, "batch_size": 16}, search={"n_trials": 1, "pruner": "none"},
        space=None))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}

    def sweeper(*args):
        return subprocess.run([sys.executable, "-m", "sweeper", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    ran = sweeper("run", "--space", str(space))
    assert ran.returncode == 0, ran.stderr
    out = sweeper("best", "--study", "hub", "--export", "out/hub.py")
    assert out.returncode == 0, out.stderr
    cfg = mmengine.Config.fromfile(str(tmp_path / "out" / "hub.py"))
    assert cfg.model.backbone.type == "ResNet" and "torchvision://" not in (tmp_path / "out" / "hub.py").read_text()
    backbone = timm.create_model("resnet18", num_classes=0)
    PretrainedInit(checkpoint=cfg.model.backbone.init_cfg.checkpoint, prefix="backbone.")(backbone)
    assert all(torch.equal(v, hub[k]) for k, v in backbone.state_dict().items())
