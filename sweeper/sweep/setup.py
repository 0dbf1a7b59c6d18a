"""Before a sweep's first trial: the slots workers run in, the decoded dataset, hub weights
fetched once, and the study created or resumed with its known configurations queued."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import optuna

from sweeper import store
from sweeper.data import datasets
from sweeper.errors import SpecError, WorkerError
from sweeper.spec.space import CategoricalParam
from sweeper.search.screen import Plan, ScreenPruner
from sweeper.spec.sweep_spec import SweepSpec
from sweeper.sweep import recovery
from sweeper.sweep.worker_handle import Slot

SCREEN_PLAN = "screen_plan"  # study user attribute: the plan every orchestrator of the study follows


def check_data(spec: SweepSpec) -> list[str]:
    """The dataset's classes, before anything is written; an objective they cannot rank is an error."""
    d = data_source(spec)
    classes = (datasets.list_folder(Path(d.root), d.val_fraction, d.test_fraction, d.test).classes
               if d.root is not None else datasets.BUILTIN_CLASSES[d.builtin])
    if spec.search.objective == "val_top5" and len(classes) <= 5:
        raise SpecError(spec.source, [("search.objective", f"val_top5 is always 1.0 with "
                                       f"{len(classes)} classes; use val_acc or val_balanced_acc")])
    return classes


def make_slots(workers: int | None, gpus_text: str | None, spec: SweepSpec | None = None) -> list[Slot]:
    """`--workers K` slots, round-robin over `--gpus` (default: every visible GPU, else the CPU),
    each GPU checked first (gpus.py), as is the precision the sweep asks of them."""
    from sweeper import gpus

    chosen = gpus.choose(gpus_text)
    if spec is not None:
        gpus.check_precision(values(spec, "precision"), chosen)
        if not chosen and "fp16" in values(spec, "precision"):
            print("warning: train.precision fp16 on the CPU: torch emulates it (about 5x slower than fp32 "
                  "on a Xeon); fp16 is for GPUs below sm_80, auto picks bf16 or fp32 here", file=sys.stderr)
    k = workers or max(1, len(chosen))
    if not chosen:
        return [Slot(i, None) for i in range(k)]
    assigned = [chosen[i % len(chosen)] for i in range(k)]  # round-robin
    gpus.check_exclusive(assigned)
    return [Slot(i, g.token, g.label, g.identity) for i, g in enumerate(assigned)]


def check_cpu_bf16(precisions: list[str], slots: list[Slot]) -> str | None:
    """Before CPU workers train with `precision: auto`: is bf16 sound on this CPU
    (train/bf16_check.py, once per machine)? The workers inherit the fallback (a capped oneDNN, or
    fp32) through this process's environment; returns the line saying so, if there is one."""
    if all(s.gpu is not None for s in slots) or "auto" not in precisions:
        return None
    from sweeper.train import bf16_check

    if not bf16_check.cpu_native_bf16() and not os.environ.get(bf16_check.FORCE_ENV):
        return None  # auto is fp32 here anyway
    found = bf16_check.verdict()
    os.environ.update(found.env())
    return found.message()


def values(spec: SweepSpec, knob: str) -> list[Any]:
    """Every value a knob can take in this sweep."""
    if knob in spec.space.names:
        p = spec.space[knob]
        return list(p.choices) if isinstance(p, CategoricalParam) else [p.low, p.high]
    return [spec.fixed[knob]]


def max_image_size(spec: SweepSpec) -> int:
    return max(values(spec, "image_size"))


def prepare_data(spec: SweepSpec, trials_root: Path, progress=None) -> Path:
    """Decode the dataset once, at the largest image size any trial asks for."""
    return datasets.prepare(data_source(spec), max_image_size(spec), trials_root / ".cache", progress)


def data_source(spec: SweepSpec) -> datasets.Source:
    d = spec.data
    return datasets.Source(str(d.root) if d.root else None, d.builtin, d.val_fraction, d.test_fraction,
                           str(d.test) if d.test else None)


def _hub_reachable() -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=5).close()
        return True
    except OSError:
        return False


def prefetch_hub_weights(spec: SweepSpec) -> None:
    """Download hub weights once, here, so that trials neither race for them nor all fail later.

    Without a route to the hub, weights already in the local cache still work (offline mode,
    passed on to the workers), and missing ones fail at once instead of after a minute of retries.
    """
    if True not in values(spec, "pretrained"):
        return
    if not _hub_reachable():
        import huggingface_hub.constants

        os.environ["HF_HUB_OFFLINE"] = "1"  # inherited by the workers
        huggingface_hub.constants.HF_HUB_OFFLINE = True  # this process read the variable already
    for name in values(spec, "model"):
        print(f"fetching timm hub weights for {name} (once, before the sweep)", file=sys.stderr)
        from sweeper.train import model as models  # timm and torch: only when hub weights are asked for

        try:
            models.create(name, 2, True)
        except WorkerError as exc:
            raise SpecError(spec.source, [("model.pretrained", str(exc))]) from None


def create_study(spec: SweepSpec, storage, storage_url: str, workers: int = 1,
                 known: Sequence[dict[str, Any]] = ()) -> optuna.Study:
    """Create or resume the study and queue the known configurations (enqueue's, then `known`:
    search.prior's, as Optuna stores them; each only once), or hand them to the prior sampler;
    a screen pruner gets its plan (the pool that fits the budget with `workers` in parallel)."""
    study = store.retrying(lambda: optuna.create_study(
        storage=storage, study_name=spec.study, direction="maximize", sampler=spec.sampler(),
        pruner=spec.pruner(), load_if_exists=True))
    # Each run of the study (a resume, a second orchestrator) gets its own sampler seed: the same
    # seed in every run would sample the same parameters again. The first run keeps the seed.
    with store.budget_lock(storage, storage_url, spec.study):
        runs = study.user_attrs.get("runs", 0)
        store.retrying(lambda: study.set_user_attr("runs", runs + 1))
    study.sampler = spec.sampler(seed_offset=runs, known=known)
    store.retrying(lambda: study.set_user_attr("objective", spec.search.objective))
    store.retrying(lambda: study.set_user_attr("value", spec.search.value))
    queued = [*map(spec.space.to_optuna_params, spec.enqueue), *known] if spec.enqueues else []
    for params in queued:
        store.retrying(lambda: study.enqueue_trial(params, skip_if_exists=True))
    if isinstance(study.pruner, ScreenPruner):
        study.pruner.plan = shared_plan(study, storage, storage_url, spec.screen_plan(workers))
        study.pruner.claimed = lambda trials: sum(recovery.counts_toward_budget(t) or (
            t.state == optuna.trial.TrialState.RUNNING and recovery.RECHECK_OF not in t.user_attrs) for t in trials)
    return study


def shared_plan(study: optuna.Study, storage, storage_url: str, mine: Plan) -> Plan:
    """The study's screening plan: the first orchestrator's, so that every orchestrator (and a
    resumed run with other --workers or n_trials) decides the same rungs with the same quotas."""
    with store.budget_lock(storage, storage_url, study.study_name):
        if (kept := study.user_attrs.get(SCREEN_PLAN)) is None:
            store.retrying(lambda: study.set_user_attr(SCREEN_PLAN, dataclasses.asdict(mine)))
            return mine
    return Plan(tuple(kept["rungs"]), tuple(kept["sizes"]), kept["epochs"])
