"""`sweeper run --dry-run`: the resolved space and a few sampled configurations, nothing written."""

from __future__ import annotations

import json
from typing import Sequence

import optuna

from sweeper.search.multi_fidelity import MultiFidelitySampler
from sweeper.spec.sweep_spec import SweepSpec

N_SAMPLES = 3


def sample_configs(spec: SweepSpec, n: int = N_SAMPLES, known: Sequence[dict] = ()) -> list[dict]:
    """The first n configurations a sweep would try (enqueued first, then search.prior's `known`,
    or the prior sampler's draws), from an in-memory study."""
    prior = spec.search.sampler.name == "prior"
    study = optuna.create_study(direction="maximize",
                                sampler=spec.sampler(known=known) if prior else optuna.samplers.RandomSampler(seed=0))
    for params in [*map(spec.space.to_optuna_params, spec.enqueue), *known] if spec.enqueues else ():
        study.enqueue_trial(params)
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(spec.space.suggest(trial))
        study.tell(trial, 0.0)
    return out


def describe(spec: SweepSpec, workers: int = 1, known: Sequence[dict] = ()) -> str:
    s = spec.search
    sampler = spec.sampler()
    mf = f" (multi-fidelity, n_min {sampler.n_min})" if isinstance(sampler, MultiFidelitySampler) else ""
    lines = [
        f"study: {spec.study}   (dry run: nothing written)",
        f"data: {spec.data.root or 'builtin:' + str(spec.data.builtin)}",
        f"search: n_trials={s.n_trials} objective={s.objective} "
        f"sampler={s.sampler.name}{s.sampler.options or ''}{mf} pruner={s.pruner.name}{s.pruner.options or ''}"
        + (f" budget={s.budget_epochs} epochs" if s.budget_epochs else "")
        + (f" recheck=top {s.recheck.top} x {s.recheck.seeds} seeds" if s.recheck else ""),
        "searched:",
    ]
    for p in spec.space.params:
        cond = " when " + ", ".join(f"{c.param} in {list(c.values)}" for c in p.when) if p.when else ""
        lines.append(f"  {p.name}: {p.describe()}{cond}")
    if not spec.space.params:
        lines.append("  (nothing: every knob is fixed)")
    lines.append("fixed:")
    lines += [f"  {k}: {json.dumps(v)}" if v is not None or k != "milestones" else
              f"  {k}: mmcls's [30, 60, 90] of 100 epochs, scaled to train.epochs" for k, v in spec.fixed.items()]
    if spec.enqueue and spec.enqueues:
        lines.append(f"enqueued first: {len(spec.enqueue)}")
    if known and spec.enqueues:
        lines.append(f"queued first from search.prior ({', '.join(spec.search.prior.studies)}): {len(known)}")
    if not spec.enqueues and (spec.enqueue or known):
        share = spec.search.sampler.options.get("uniform_share", 0.5)
        lines.append(f"prior: {len(spec.enqueue)} known configurations from enqueue, {len(known)} from "
                     f"search.prior; then mutations of them; {share:.0%} of the trials uniform")
    if (plan := spec.screen_plan(workers)) is not None:
        budget = spec.search_budget_epochs
        lines.append(f"screen ({workers} worker(s)): {plan.describe()}"
                     + (f" of a budget of {budget}" if budget is not None else " (no budget: pool = n_trials)"))
        lines.append(f"  rungs at epochs {', '.join(map(str, plan.rungs))}; a rung is decided once full; "
                     f"the best of the last stage is the answer")
    lines.append(f"first {N_SAMPLES} configurations:")
    for i, params in enumerate(sample_configs(spec, known=known)):
        lines.append(f"  {i}: " + json.dumps(params))
    return "\n".join(lines)
