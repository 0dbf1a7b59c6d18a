"""Mixup / CutMix, EMA and stochastic depth: what the worker trains with, checked against what
mmcls / mmpretrain / mmengine mean by the same knobs (their formulas, transcribed with their
source path, or the real mmengine)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sweeper.analyze import export
from sweeper.spec.sweep_spec import parse_spec
from sweeper.spec.trial_config import resolve
from sweeper.testing import tiny_space
from sweeper.train import model as models
from sweeper.train import regularizers

mmengine = pytest.importorskip("mmengine")
CLASSES = [f"c{i}" for i in range(5)]


def _config(tmp_path, model=None, **train):
    doc = tiny_space(tmp_path / "data", model=model or {"name": "resnet18"},
                     train={"epochs": 4, "batch_size": 8, **train})
    (tmp_path / "data" / "train").mkdir(parents=True, exist_ok=True)
    return resolve(parse_spec(doc), 0, {"lr": 0.05}, tmp_path / "trials", tmp_path / "c.pt")


def _exported(tmp_path, config, fmt):
    text = (export.mmcls_config if fmt == "mmcls" else export.mmpretrain_config)(config, CLASSES)
    path = tmp_path / f"{fmt}.py"
    path.write_text(text)
    return mmengine.Config.fromfile(str(path)), text


def _outcome(before: torch.Tensor, after: torch.Tensor) -> str:
    """none / cutmix / mixup, read off the pixels: CutMix pastes the partner's pixels unchanged."""
    if torch.equal(before, after):
        return "none"
    partner = before.flip(0)
    pasted_or_own = ((after == before) | (after == partner)).all()
    return "cutmix" if pasted_or_own else "mixup"


@pytest.mark.parametrize("fmt", ["mmcls", "mmpretrain"])
def test_exported_batch_augment_probabilities_give_the_trials_mix_of_outcomes(tmp_path, fmt):
    config = _config(tmp_path, batch_augment={"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "prob": 0.8,
                                              "switch_prob": 0.25})
    cfg, text = _exported(tmp_path, config, fmt)
    if fmt == "mmcls":  # mmcls/models/utils/augment/augments.py: one augment per batch by `prob`
        augments = cfg.model.train_cfg.augments
        assert [a.type for a in augments] == ["BatchMixup", "BatchCutMix"]
        assert all(isinstance(a.alpha, float) and isinstance(a.prob, float) for a in augments)
        assert [a.num_classes for a in augments] == [5, 5]
        probs = {"mixup": augments[0].prob, "cutmix": augments[1].prob}
    else:  # mmpretrain/models/utils/batch_augments/wrapper.py: RandomBatchAugment(augments, probs)
        batch = cfg.data_preprocessor.batch_augments
        assert [a.type for a in batch.augments] == ["Mixup", "CutMix"]
        assert [a.alpha for a in batch.augments] == [0.8, 1.0]
        probs = dict(zip(["mixup", "cutmix"], batch.probs))
    probs["none"] = 1 - probs["mixup"] - probs["cutmix"]  # both add an identity with the rest
    assert "NOTE: Mixup/CutMix pair each image with a random permutation" in text

    np.random.seed(0)
    torch.manual_seed(0)
    mix = regularizers.batch_mix(config, 5)
    n = 3000
    seen = {"none": 0, "mixup": 0, "cutmix": 0}
    for _ in range(n):
        x = torch.rand(4, 3, 8, 8)
        mixed, _ = mix(x.clone(), torch.tensor([0, 1, 2, 3]))
        seen[_outcome(x, mixed)] += 1
    for outcome, p in probs.items():
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(seen[outcome] / n - p) < 4 * sigma + 1e-9, (outcome, seen, probs)


def test_mixed_targets_follow_the_pixels_as_mmcls_mixes_labels(tmp_path):
    """mmcls BatchMixupLayer / BatchCutMixLayer: mixed_gt = lam x onehot + (1 - lam) x
    onehot[partner], CutMix's lam = 1 - box area / image area (correct_lam); then LabelSmoothLoss
    ('original') smooths the mixed label: label x (1 - eps) + eps / C."""
    eps, classes = 0.1, 5
    config = _config(tmp_path, label_smoothing=eps,
                     batch_augment={"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "switch_prob": 0.5})
    mix = regularizers.batch_mix(config, classes)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    onehot = F.one_hot(labels, classes).float()
    np.random.seed(3)
    kinds = set()
    for _ in range(40):
        x = torch.rand(6, 3, 16, 16)
        mixed, target = mix(x.clone(), labels)
        kind = _outcome(x, mixed)
        kinds.add(kind)
        partner = x.flip(0)
        if kind == "cutmix":
            area = (mixed[0] != x[0]).any(dim=0).sum().item()  # pixels pasted from the partner
            lam = 1 - area / (16 * 16)
        else:  # least squares of mixed = lam x own + (1 - lam) x partner
            d = (x - partner).flatten()
            lam = float(((mixed - partner).flatten() @ d) / (d @ d))
        expected = lam * onehot + (1 - lam) * onehot.flip(0)
        expected = expected * (1 - eps) + eps / classes
        assert torch.allclose(target, expected, atol=1e-5), kind
        # the loss of a mixed batch: mmcls's soft cross-entropy, -sum(label x log_softmax) averaged
        logits = torch.randn(6, classes)
        loss = regularizers.criterion(config)(logits, target)
        assert loss.item() == pytest.approx((-(target * F.log_softmax(logits, 1)).sum(1)).mean().item(), rel=1e-6)
    assert kinds == {"mixup", "cutmix"}


def test_an_odd_batch_mixes_all_but_its_last_image(tmp_path):
    config = _config(tmp_path, batch_augment={"mixup_alpha": 1.0})
    x = torch.rand(5, 3, 8, 8)
    mixed, target = regularizers.batch_mix(config, 5)(x.clone(), torch.tensor([0, 1, 2, 3, 4]))
    assert mixed.shape == x.shape and torch.equal(mixed[-1], x[-1])
    assert target[-1].tolist() == [0, 0, 0, 0, 1] and torch.allclose(target.sum(1), torch.ones(5))


def test_ema_is_mmengines_exponential_moving_average_of_the_parameters(tmp_path):
    """Run mmengine's own ExponentialMovingAverage (momentum = 1 - decay, update_buffers=False,
    what the exported EMAHook builds) beside the worker's EMA over the same SGD steps."""
    from mmengine.model import ExponentialMovingAverage

    decay = 0.9
    config = _config(tmp_path, ema={"decay": decay})
    torch.manual_seed(0)
    net = models.create("resnet10t", 3, False)
    ours = regularizers.weight_average(config, net)
    theirs = ExponentialMovingAverage(net, momentum=1 - decay)
    theirs.update_parameters(net)  # mmengine's first update copies: here, the starting weights
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(5):
        net.train()
        loss = F.cross_entropy(net(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        ours.update(net)
        theirs.update_parameters(net)
    ema, live = ours.module.state_dict(), net.state_dict()
    for name, value in theirs.module.state_dict().items():
        assert torch.allclose(ema[name].float(), value.float(), atol=1e-6), name
    params = dict(net.named_parameters())
    assert any(not torch.allclose(ema[n], p) for n, p in params.items())  # averaged, not a copy
    buffers = [n for n, _ in net.named_buffers()]
    assert buffers and all(torch.equal(ema[n], live[n]) for n in buffers)  # BN statistics: the live ones


@pytest.mark.parametrize("fmt", ["mmcls", "mmpretrain"])
def test_ema_and_drop_path_are_exported_with_openmmlab_meaning(tmp_path, fmt):
    config = _config(tmp_path, model={"name": "resnet18", "drop_path_rate": 0.2}, ema={"decay": 0.9998})
    cfg, text = _exported(tmp_path, config, fmt)
    (hook,) = cfg.custom_hooks
    assert hook.type == "EMAHook" and hook.momentum == pytest.approx(0.0002)
    assert "warm_up" not in hook  # mmcv's warm-up only lowers momenta above 0.01
    assert cfg.model.backbone.drop_path_rate == 0.2
    if fmt == "mmcls":
        assert "mmcls 0.x's ResNet drops every block at drop_path_rate" in text
    else:
        assert "mmengine's EMA starts from the weights after the first iteration" in text
    fast = dataclasses.replace(config, ema_decay=0.9)
    (hook,) = _exported(tmp_path, fast, fmt)[0].custom_hooks
    assert hook.momentum == pytest.approx(0.1)
    if fmt == "mmcls":  # mmcv EMAHook: min(momentum, (1 + t) / (warm_up + t)) is 0.1 from t = 0 only if warm_up = 1
        assert hook.warm_up == 1


def test_drop_path_grows_per_block_as_mmpretrains_resnet(tmp_path):
    """mmpretrain/models/backbones/resnet.py: dpr = torch.linspace(0, drop_path_rate, total_depth)."""
    net = models.create("resnet18", 5, False, drop_path_rate=0.2)
    blocks = [m for m in net.modules() if type(m).__name__ == "BasicBlock"]
    rates = [getattr(b.drop_path, "drop_prob", 0.0) if b.drop_path is not None else 0.0 for b in blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.2, len(blocks)).tolist())


def test_soft_targets_use_soft_cross_entropy_in_the_export(tmp_path):
    plain = _config(tmp_path, batch_augment={"cutmix_alpha": 1.0})
    cfg, _ = _exported(tmp_path, plain, "mmpretrain")
    assert cfg.model.head.loss.type == "CrossEntropyLoss" and cfg.model.head.loss.use_soft is True
    assert [a.type for a in cfg.data_preprocessor.batch_augments.augments] == ["CutMix"]
    assert cfg.data_preprocessor.batch_augments.probs == [1.0]
    smoothed = _config(tmp_path, label_smoothing=0.1, batch_augment={"cutmix_alpha": 1.0})
    assert _exported(tmp_path, smoothed, "mmcls")[0].model.head.loss.type == "LabelSmoothLoss"
    none = _config(tmp_path)
    cfg, _ = _exported(tmp_path, none, "mmcls")
    assert "train_cfg" not in cfg.model and "custom_hooks" not in cfg


def test_a_trial_with_mixing_and_ema_validates_and_saves_the_ema_weights(colour_folder, tmp_path):
    from sweeper.data import datasets
    from sweeper.train.worker import run_trial

    spec = parse_spec(tiny_space(colour_folder, model={"drop_path_rate": 0.1},
                                 train={"epochs": 2, "batch_size": 8, "ema": {"decay": 0.5},
                                        "batch_augment": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}}))
    cache = datasets.prepare(datasets.Source(str(colour_folder), None, 0.2), 16, tmp_path / "cache")
    config = resolve(spec, 0, {"lr": 0.05}, tmp_path / "trials", cache)
    events = []
    assert run_trial(config, lambda e: events.append(e) or True) == "complete"
    out = Path(config.trial_dir)
    from sweeper.train import resume

    saved = torch.load(out / "checkpoint.pth", weights_only=True)["state_dict"]
    state = resume.load(dataclasses.replace(config, resume_from=str(out / resume.RESUME), resume_trial=config.number))
    name = next(k for k in saved if k.endswith("weight") and saved[k].dim() == 4)
    assert torch.equal(saved[name], state["ema"][name])
    assert not torch.equal(saved[name], state["model"][name])
    assert "use the EMA of the weights (decay 0.5)" in (out / "log.txt").read_text()


@pytest.mark.parametrize("pretrained", [False, True])
def test_a_model_without_stochastic_depth_is_one_clear_error(pretrained):
    from sweeper.errors import WorkerError

    with pytest.raises(WorkerError, match="timm model vgg11 has no stochastic depth .*leave model.drop_path_rate at 0"):
        models.create("vgg11", 3, pretrained, drop_path_rate=0.1)
