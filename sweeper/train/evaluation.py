"""What validation measures after each epoch (and part-way through one), and which epoch's
weights a trial keeps."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from sweeper.data.augment import Normalize
from sweeper.train.device import Amp


@torch.no_grad()
def evaluate(model: nn.Module, loader, normalize: Normalize, amp: Amp, num_classes: int) -> dict:
    model.eval()
    k = min(5, num_classes)
    correct = correct_k = 0
    per_class_hits = torch.zeros(num_classes)
    per_class_total = torch.zeros(num_classes)
    for x, y in loader:
        x = normalize(x)
        with amp.autocast():
            logits = model(x).float().cpu()
        top = logits.topk(k, dim=1).indices
        # argmax, not topk's first: bf16 logits tie often, and argmax breaks ties the same way
        # everywhere (the lowest class), so a checkpoint re-scored by `ensemble` agrees
        hit = logits.argmax(dim=1) == y
        correct += int(hit.sum())
        correct_k += int((top == y[:, None]).any(dim=1).sum())
        per_class_hits += torch.bincount(y[hit], minlength=num_classes)
        per_class_total += torch.bincount(y, minlength=num_classes)
    n = int(per_class_total.sum())
    present = per_class_total > 0
    return {
        "val_acc": correct / n,
        "val_balanced_acc": float((per_class_hits[present] / per_class_total[present]).mean()),
        "val_top5": correct_k / n,
    }


def validation_steps(steps: int, eval_every: float) -> dict[int, float]:
    """The steps of an epoch after which validation runs (1/eval_every evenly spaced points, the
    last at the epoch's end), each with the fraction of the epoch it stands for."""
    k = round(1 / eval_every)
    return {round(steps * j / k): j / k for j in range(k, 0, -1) if round(steps * j / k) > 0}


def decision_steps(steps: int, epoch: int, decide_at) -> dict[int, float]:
    """The steps of epoch `epoch` (0-based) after which the orchestrator decides whether the
    trial goes on (part-epoch rungs, e.g. 0.5), each with its fraction of the epoch: after that
    fraction of its steps, at least one (an epoch of one step, a large batch on little data, is
    judged after it: every trial passes the rung)."""
    return {max(1, round(steps * (at - epoch))): at - epoch for at in decide_at if int(at) == epoch}


def scores(model: nn.Module, loaders, amp: Amp, num_classes: int) -> dict[str, float]:
    """Validation's metrics; with a recorded test split, the same metrics on it (test_*) and
    the seconds that took."""
    out = evaluate(model, loaders.val, loaders.normalize, amp, num_classes)
    if loaders.test is not None:  # timed apart: a sweep would not have spent it
        started = time.perf_counter()
        test = evaluate(model, loaders.test, loaders.normalize, amp, num_classes)
        out.update({"test" + k[3:]: v for k, v in test.items()}, test_seconds=time.perf_counter() - started)
    return out


class Chosen:
    """The epoch whose objective is the trial's value: the last one, or the best (earliest on
    ties); in `best` mode a CPU copy of that epoch's weights is kept for the checkpoint."""

    def __init__(self, mode: str):
        self.mode, self.value, self.epoch = mode, -math.inf, 0
        self.state: dict[str, torch.Tensor] | None = None

    def offer(self, epoch: int, value: float, model: nn.Module) -> None:
        if self.mode == "last":
            self.value, self.epoch = value, epoch
        elif value > self.value:
            self.value, self.epoch = value, epoch
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
