"""Frozen stages (mmcls semantics), differential lr, and loading local checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from sweeper.errors import WorkerError
from sweeper.train import model as models


def _train_steps(model, frozen, steps=3):
    groups = models.param_groups(model, lr=0.1, backbone_lr_mult=0.5)
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    torch.manual_seed(0)
    for _ in range(steps):
        models.train_mode(model, frozen)
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _bn_stats(module):
    return {n: b.clone() for n, b in module.named_buffers() if "running_mean" in n}


@pytest.mark.parametrize("name, frozen_prefixes, trained_prefixes", [
    ("test_resnet", ("conv1", "bn1", "layer1."), ("layer2.", "fc.")),
    ("test_efficientnet", ("conv_stem", "bn1", "blocks.0."), ("blocks.1.", "classifier.")),
])
def test_frozen_stages_keep_weights_and_batchnorm_stats(name, frozen_prefixes, trained_prefixes):
    model = models.create(name, num_classes=3, pretrained=False)
    frozen = models.freeze_stages(model, 1)  # stem + stage 1
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats_before = _bn_stats(model)
    _train_steps(model, frozen)
    after = dict(model.named_parameters())
    stats_after = _bn_stats(model)

    frozen_names = [n for n in before if n.startswith(frozen_prefixes)]
    trained_names = [n for n in before if n.startswith(trained_prefixes)]
    assert frozen_names and trained_names
    for n in frozen_names:
        assert torch.equal(before[n], after[n]), n
        assert not after[n].requires_grad
    assert all(not torch.equal(before[n], after[n]) for n in trained_names if n.endswith("weight"))
    frozen_stats = [n for n in stats_before if n.startswith(frozen_prefixes)]
    trained_stats = [n for n in stats_before if n.startswith(trained_prefixes)]
    assert frozen_stats and trained_stats
    assert all(torch.equal(stats_before[n], stats_after[n]) for n in frozen_stats)
    assert any(not torch.equal(stats_before[n], stats_after[n]) for n in trained_stats)


def test_minus_one_freezes_nothing_and_too_many_stages_is_an_error():
    model = models.create("test_resnet", num_classes=3, pretrained=False)
    assert models.freeze_stages(model, -1) == []
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(WorkerError, match="has 4 stages"):
        models.freeze_stages(model, 5)


def test_backbone_lr_mult_lowers_every_group_but_the_head():
    model = models.create("test_resnet", num_classes=3, pretrained=False)
    groups = models.param_groups(model, lr=0.1, backbone_lr_mult=0.1)
    head = [g for g in groups if g["lr"] == 0.1]
    assert len(head) == 1 and {id(p) for p in head[0]["params"]} == {id(p) for p in model.fc.parameters()}
    assert [g["lr"] for g in groups if g is not head[0]] == [pytest.approx(0.01)]


def test_checkpoint_with_another_head_loads_backbone_and_gets_fresh_head(tmp_path):
    source = models.create("test_resnet", num_classes=7, pretrained=False)
    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    model = models.create("test_resnet", num_classes=3, pretrained=str(path))
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)
    assert torch.equal(model.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    assert model.fc.out_features == 3


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(models.create("test_efficientnet", 3, False).state_dict(), path)
    with pytest.raises(WorkerError, match="another architecture"):
        models.create("test_resnet", num_classes=3, pretrained=str(path))


@pytest.mark.slow
def test_unreachable_hub_weights_suggest_a_local_file(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "TORCH_HOME": str(tmp_path)}
    code = "from sweeper.train.model import create; create('resnet18', 3, True)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "could not fetch timm hub weights for resnet18" in out.stderr
    assert "model.pretrained: path/to/resnet18.pth" in out.stderr
