"""Optuna samplers and pruners by name, with their options checked against the real signatures."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import optuna

from sweeper.errors import quoted
from sweeper.search.asha import AshaPruner
from sweeper.search.multi_fidelity import MultiFidelitySampler
from sweeper.search.prior import PriorSampler
from sweeper.search.screen import ScreenPruner


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid, with the end of the grid left to the orchestrator.

    Optuna's `after_trial` calls `study.stop()` when the last point finishes, which raises
    outside `study.optimize` (sweeper asks and tells itself); the orchestrator asks
    `has_unstarted_points` before each trial instead, which also keeps a second orchestrator
    from re-running a point that is still running elsewhere.
    """

    def after_trial(self, study, trial, state, values) -> None:
        pass

    def has_unstarted_points(self, study: optuna.Study) -> bool:
        started = set()
        for t in study._storage.get_all_trials(study._study_id, deepcopy=False):
            if t.state == optuna.trial.TrialState.WAITING:
                return True  # a queued retry or enqueued configuration
            if "grid_id" in t.system_attrs and self._same_search_space(t.system_attrs["search_space"]):
                started.add(t.system_attrs["grid_id"])
        return len(started) < self._n_min_trials


SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "grid": GridSampler,
    "gp": optuna.samplers.GPSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "qmc": optuna.samplers.QMCSampler,
    "prior": PriorSampler,  # known configurations, their mutations and uniform samples (prior.py)
}

PRUNERS: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "patient": optuna.pruners.PatientPruner,
    "asha": AshaPruner,  # pauses and promotes through the orchestrator (asha.py)
    "screen": ScreenPruner,  # asha with full rungs over a pool planned to fit the budget (screen.py)
    "none": optuna.pruners.NopPruner,
}

# Options sweeper fills in itself; the user may not set them.
_RESERVED = {"search_space", "wrapped_pruner", "constraints_func", "known"}
# Samplers that model the study's values, and so can see every epoch (multi_fidelity.py); on
# by default. `n_min`: the trials an epoch needs before it is modelled (default: searched
# dimensions + 1, as BOHB).
MULTI_FIDELITY = ("tpe", "gp")
_MULTI_FIDELITY_OPTIONS = ("multi_fidelity", "n_min")


@dataclass(frozen=True)
class Named:
    """A strategy by name with its options; `wrapped` is the inner pruner of `patient`."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    wrapped: "Named | None" = None


def parse_named(
    raw: Any, registry: dict[str, Callable[..., Any]], path: str, problems: list[tuple[str, str]]
) -> Named | None:
    """`tpe` or `{name: tpe, seed: 0}` -> Named, reporting unknown names and options."""
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        problems.append((path, f"must be a name or {{name: ..., option: value}}; valid names: "
                               f"{', '.join(registry)}"))
        return None
    options = dict(raw)
    name = options.pop("name")
    if name not in registry:
        problems.append((f"{path}.name", f"unknown {quoted(name)}; valid names: {', '.join(registry)}"))
        return None
    wrapped = None
    if name == "patient":
        if "wrapped" not in options:
            problems.append((f"{path}.wrapped", "patient needs the pruner it wraps, e.g. "
                                                "wrapped: {name: median}"))
            return None
        wrapped = parse_named(options.pop("wrapped"), registry, f"{path}.wrapped", problems)
        if wrapped is None:
            return None
    valid = [p for p in inspect.signature(registry[name]).parameters if p not in _RESERVED]
    if registry is SAMPLERS and name in MULTI_FIDELITY:
        valid += _MULTI_FIDELITY_OPTIONS
        if not isinstance(options.get("multi_fidelity", True), bool):
            problems.append((f"{path}.multi_fidelity", f"must be true or false, got {quoted(options['multi_fidelity'])}"))
        n_min = options.get("n_min", 2)
        if not isinstance(n_min, int) or isinstance(n_min, bool) or n_min < 2:
            problems.append((f"{path}.n_min", f"must be an integer >= 2 (trials an epoch needs before "
                                              f"the sampler models it), got {quoted(n_min)}"))
    for key in options:
        if key not in valid:
            problems.append((f"{path}.{key}", f"not an option of {name}; valid options: "
                                              f"{', '.join(valid) or '(none)'}"))
    return Named(name, options, wrapped)


def create_sampler(spec: Named, grid: Callable[[], dict[str, list[Any]]], seed_offset: int = 0,
                   dimensions: int = 1, known: Sequence[dict[str, Any]] = ()) -> optuna.samplers.BaseSampler:
    """Build the sampler; `grid` supplies the search space that GridSampler needs, `dimensions`
    (the parameters searched) the multi-fidelity default n_min, `known` the configurations the
    prior sampler draws from (as Optuna stores them)."""
    options = dict(spec.options)
    if options.get("seed") is not None:
        options["seed"] += seed_offset
    if spec.name == "grid":
        options["search_space"] = grid()
    if spec.name == "prior":
        options["known"] = list(known)
    multi_fidelity = options.pop("multi_fidelity", True) and spec.name in MULTI_FIDELITY
    n_min = options.pop("n_min", max(2, dimensions + 1))
    if not multi_fidelity:
        return SAMPLERS[spec.name](**options)
    # the view holds >= n_min finished trials once an epoch is modelled, so the base models from
    # there on (unless the user asked for a longer start-up)
    options.setdefault("n_startup_trials", n_min)
    return MultiFidelitySampler(SAMPLERS[spec.name](**options), n_min)


def create_pruner(spec: Named) -> optuna.pruners.BasePruner:
    if spec.wrapped is not None:
        return PRUNERS[spec.name](create_pruner(spec.wrapped), **spec.options)
    return PRUNERS[spec.name](**spec.options)
