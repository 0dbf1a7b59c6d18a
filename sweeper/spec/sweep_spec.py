"""Search-space YAML -> a validated, typed `SweepSpec`; every problem is reported at once."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


from sweeper.errors import SpecError, quoted
from sweeper.search import screen
from sweeper.search.screen import Plan
from sweeper.search.strategies import (
    PRUNERS,
    SAMPLERS,
    Named,
    create_pruner,
    create_sampler,
    parse_named,
)
from sweeper.spec.data_spec import DATA_KEYS, DataSpec, parse_data
from sweeper.spec.budget import Recheck, check_fits, parse_budget, parse_recheck, recheck_epochs
from sweeper.spec.knobs import BY_NAME, BY_PATH, DEFAULTS, KNOBS
from sweeper.spec.policies import BUILTIN_POLICIES, OPERATIONS
from sweeper.spec.prior import PriorStudies, parse_prior
from sweeper.spec.space import CategoricalParam, FloatParam, SearchSpace
from sweeper.spec.space_yaml import as_number, did_you_mean, parse_enqueue, parse_space
from sweeper.spec.tracking import parse_section
from sweeper.spec.yaml_file import read_yaml

OBJECTIVES = ("val_acc", "val_balanced_acc", "val_top5")
TOP_KEYS = ("study", "data", "model", "train", "search", "space", "augment_policies", "enqueue", "logging")
SEARCH_KEYS = ("n_trials", "timeout", "sampler", "pruner", "objective", "value", "budget", "recheck", "prior")
VALUE_MODES = ("last", "best")
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

Problems = list[tuple[str, str]]


@dataclass(frozen=True)
class SearchSpec:
    n_trials: int = 20
    timeout: float | None = None
    sampler: Named = Named("tpe", {"seed": 0})
    pruner: Named = Named("median", {"n_warmup_steps": 1})
    objective: str = "val_acc"
    value: str = "last"  # the value told to the study: the last epoch's or the best epoch's
    budget_epochs: int | None = None  # epochs trained across all trials before the sweep stops
    recheck: Recheck | None = None  # the best configurations retrained with more seeds at the end
    prior: PriorStudies | None = None  # earlier studies whose best configurations are known ones


@dataclass(frozen=True)
class SweepSpec:
    study: str
    data: DataSpec
    fixed: dict[str, Any]  # every knob not searched, defaults filled in
    space: SearchSpace
    search: SearchSpec
    policies: dict[str, tuple[str, ...] | None]  # built-in and user policy sets
    enqueue: tuple[dict[str, Any], ...] = ()
    source: str = ""
    logging: tuple[str, ...] = ()  # trackers beside the store: tensorboard, mlflow (spec/tracking.py)

    def sampler(self, seed_offset: int = 0, known: Sequence[dict[str, Any]] = ()):
        """The sampler; `seed_offset` gives each run of a study its own seeded sequence; `known`:
        configurations for the prior sampler beyond enqueue's (earlier studies' best)."""
        return create_sampler(self.search.sampler, self.space.grid, seed_offset, len(self.space.params),
                              [*map(self.space.to_optuna_params, self.enqueue), *known])

    def screen_plan(self, workers: int = 1) -> Plan | None:
        """The screen pruner's stages (search/screen.py), or None for another pruner."""
        p = self.search.pruner
        if p.name != "screen":
            return None
        n_trials = self.search.n_trials
        if self.search.sampler.name == "grid":  # a pool larger than the grid would never fill its first rung
            n_trials = min(n_trials or math.inf, math.prod(len(v) for v in self.space.grid().values()))
        return screen.plan(self.max_epochs, p.options.get("min_resource", 1), p.options.get("reduction_factor", 3),
                           self.search_budget_epochs, n_trials, workers)

    @property
    def enqueues(self) -> bool:
        """Are the known configurations queued as trials? (The prior sampler draws them itself.)"""
        return self.search.sampler.name != "prior"

    def pruner(self):
        return create_pruner(self.search.pruner)

    @property
    def max_epochs(self) -> int:
        """A trial's epochs (the most a searched `epochs` allows)."""
        if "epochs" not in self.space.names:
            return self.fixed["epochs"]
        p = self.space["epochs"]
        return max(p.choices) if hasattr(p, "choices") else p.high

    @property
    def search_budget_epochs(self) -> int | None:
        """The epochs the search may train: the budget less the re-check planned at the end."""
        s = self.search
        return None if s.budget_epochs is None else s.budget_epochs - recheck_epochs(s.recheck, self.max_epochs)


def validate_study_name(name: Any) -> str | None:
    if not isinstance(name, str) or not STUDY_NAME.fullmatch(name) or ".." in name:
        return ("must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit "
                f"(it names the folder trials/<study>); got {quoted(name)}")
    return None


def _walk_fixed(raw: dict, prefix: tuple[str, ...], fixed: dict, problems: Problems) -> None:
    """Collect fixed knobs under data/model/train, naming unknown keys with suggestions."""
    children = {k.path[len(prefix)] for k in KNOBS if k.path[: len(prefix)] == prefix
                and len(k.path) > len(prefix)}
    if prefix == ("data",):
        children |= set(DATA_KEYS)
    for key, value in raw.items():
        path = prefix + (str(key),)
        dotted = ".".join(path)
        if prefix == ("data",) and key in DATA_KEYS:
            continue
        knob = BY_PATH.get(path)
        if knob is not None:
            fixed[knob.name] = (dotted, as_number(value) if knob.kind == "float" else value)
        elif key in children and isinstance(value, dict):
            _walk_fixed(value, path, fixed, problems)
        elif key in children:
            # shorthand: `optimizer: sgd` for `optimizer: {name: sgd}`, and so on
            short = [BY_PATH[path + (leaf,)] for leaf in ("name", "type", "rule", "policy")
                     if path + (leaf,) in BY_PATH]
            if short:
                fixed[short[0].name] = (dotted, value)
            else:
                problems.append((dotted, "must be a mapping"))
        else:
            problems.append((dotted, did_you_mean(str(key), sorted(children))))


def _parse_policies(raw: Any, problems: Problems) -> dict[str, tuple[str, ...] | None]:
    policies = dict(BUILTIN_POLICIES)
    if raw is None:
        return policies
    if not isinstance(raw, dict):
        problems.append(("augment_policies", "must map policy names to lists of operations"))
        return policies
    for name, ops in raw.items():
        path = f"augment_policies.{name}"
        if name in ("none", "flip_crop"):
            problems.append((path, f"{quoted(name)} is built in; choose another name"))
        elif not isinstance(ops, list) or not ops:
            problems.append((path, "must be a non-empty list of operations"))
        else:
            for i, op in enumerate(ops):
                if not isinstance(op, str) or op not in OPERATIONS:
                    close = difflib.get_close_matches(str(op), list(OPERATIONS), n=1)
                    hint = f"did you mean {quoted(close[0])}? " if close else ""
                    problems.append((f"{path}[{i}]", f"unknown operation {quoted(op)}; {hint}"
                                                     f"valid: {', '.join(OPERATIONS)}"))
            policies[str(name)] = tuple(ops)
    return policies


def _parse_search(raw: Any, problems: Problems) -> SearchSpec:
    if raw is None:
        return SearchSpec()
    if not isinstance(raw, dict):
        problems.append(("search", "must be a mapping"))
        return SearchSpec()
    for key in raw:
        if key not in SEARCH_KEYS:
            problems.append((f"search.{key}", did_you_mean(str(key), list(SEARCH_KEYS))))
    defaults = SearchSpec()
    n = raw.get("n_trials", defaults.n_trials)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        problems.append(("search.n_trials", f"must be an integer >= 1, got {quoted(n)}"))
    timeout = raw.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        problems.append(("search.timeout", f"must be seconds > 0, got {quoted(timeout)}"))
    objective = raw.get("objective", defaults.objective)
    if objective not in OBJECTIVES:
        problems.append(("search.objective", f"unknown {quoted(objective)}; valid: {', '.join(OBJECTIVES)}"))
    value = raw.get("value", defaults.value)
    if value not in VALUE_MODES:
        problems.append(("search.value", f"unknown {quoted(value)}; valid: last (the last epoch's "
                                         "objective) or best (the best epoch's)"))
    sampler = parse_named(raw.get("sampler", "tpe"), SAMPLERS, "search.sampler", problems)
    pruner = parse_named(raw.get("pruner", "median"), PRUNERS, "search.pruner", problems)
    if pruner is not None and pruner.name == "asha" and not any(p.startswith("search.pruner") for p, _ in problems):
        try:
            create_pruner(pruner)
        except ValueError as exc:
            problems.append(("search.pruner", str(exc)))
    return SearchSpec(n, timeout, sampler or defaults.sampler, pruner or defaults.pruner, objective,
                      value, parse_budget(raw.get("budget"), problems), parse_recheck(raw.get("recheck"), problems),
                      parse_prior(raw.get("prior"), problems, validate_study_name))


def _check_values(values: dict[str, list[tuple[str, Any]]], policies: dict, problems: Problems) -> None:
    """Checks that involve more than one knob, over every fixed value and searched choice."""
    def numbers(name: str) -> list[float]:
        return [v for _, v in values.get(name, []) if isinstance(v, (int, float))]

    max_epochs = max(numbers("epochs"), default=0)
    step_possible = any(v == "step" for _, v in values.get("schedule", []))
    for path, ms in values.get("milestones", []) if step_possible else []:
        if isinstance(ms, list) and ms and isinstance(ms[-1], int) and max_epochs and ms[-1] >= max_epochs:
            problems.append((path.strip("()").removeprefix("default "),
                             f"milestone {ms[-1]} is not before the last epoch (epochs: "
                             f"{int(max_epochs)}); set milestones below it or raise epochs"))
    for path, name in values.get("augment", []):
        if isinstance(name, str) and name not in policies:
            problems.append((path, f"unknown augmentation policy {quoted(name)}; defined: "
                                   f"{', '.join(policies)} (add it under augment_policies)"))
    for path, p in values.get("pretrained", []):
        if isinstance(p, str) and not Path(p).expanduser().is_file():
            problems.append((path, f"checkpoint {quoted(p)} not found; give a .pth file, true for "
                                   "timm hub weights, or false"))
    if numbers("warmup_iters") and numbers("warmup_epochs") and max(numbers("warmup_iters")) > 0 \
            and max(numbers("warmup_epochs")) > 0:
        problems.append(("train.warmup", "give warmup iters or epochs, not both"))
    if any(w != "none" for _, w in values.get("warmup", [])) and \
            max(numbers("warmup_iters") + numbers("warmup_epochs"), default=0) == 0:
        problems.append(("train.warmup", "a warmup needs a length: set train.warmup.iters or "
                                         "train.warmup.epochs (or type: none)"))
    models = [(path, m) for path, m in values.get("model", []) if isinstance(m, str)]
    if models:
        from sweeper.spec import timm_catalog

        unknown = set(timm_catalog.unknown([m for _, m in models]))
        known = timm_catalog.model_names()
        for path, m in models:
            if m in unknown and "." in m and m.split(".")[0] in known:
                problems.append((path, f"unknown pretrained tag {quoted(m)}: timm's `timm.list_pretrained("
                                       f"'{m.split('.')[0]}*')` lists the tags of {m.split('.')[0]}"))
            elif m in unknown:
                close = difflib.get_close_matches(m, known, n=3)
                hint = f"; close matches: {', '.join(close)}" if close else ""
                problems.append((path, f"unknown timm model {quoted(m)}{hint}"))


def _parse_fixed(raw: dict, data_root: str | None, problems: Problems
                 ) -> tuple[DataSpec, dict[str, tuple[str, Any]]]:
    """The `data`, `model` and `train` sections: the data spec, and each fixed knob's YAML path
    and value (checked against the knob's rule)."""
    raw_data = raw.get("data") or {}
    if data_root:
        raw_data = {**raw_data, "root": data_root}
        raw_data.pop("builtin", None)
    fixed_raw: dict[str, tuple[str, Any]] = {}
    for section in ("data", "model", "train"):
        value = raw_data if section == "data" else raw.get(section)
        if value is None:
            continue
        if not isinstance(value, dict):
            problems.append((section, "must be a mapping"))
            continue
        _walk_fixed(value, (section,), fixed_raw, problems)
    data = parse_data(raw_data if isinstance(raw_data, dict) else {}, problems)
    for name, (path, value) in fixed_raw.items():
        if (msg := BY_NAME[name].check(value)) is not None:
            problems.append((path, msg))
    return data, fixed_raw


def _knob_values(fixed: dict[str, Any], fixed_raw: dict[str, tuple[str, Any]],
                 space: SearchSpace) -> dict[str, list[tuple[str, Any]]]:
    """Every fixed value and every searched choice/bound with its YAML path, for checks across knobs."""
    values: dict[str, list[tuple[str, Any]]] = {}
    for name, value in fixed.items():
        path = fixed_raw[name][0] if name in fixed_raw else f"(default {BY_NAME[name].yaml_path})"
        values.setdefault(name, []).append((path, value))
    for p in space.params:
        if isinstance(p, CategoricalParam):
            values[p.name] = [(f"space.{p.name}.choices[{i}]", c) for i, c in enumerate(p.choices)]
        else:
            values[p.name] = [(f"space.{p.name}.low", p.low), (f"space.{p.name}.high", p.high)]
    return values


def _check_strategies(search: SearchSpec, space: SearchSpace, problems: Problems) -> None:
    """The grid sampler's needs, then (once all else is valid) the sampler's and pruner's own
    validation of their options."""
    if search.sampler.name == "grid":
        for p in space.params:
            if isinstance(p, FloatParam) and p.step is None:
                problems.append((f"space.{p.name}", "the grid sampler needs a step for every "
                                                    "float range (or list the choices)"))
    if problems:
        return
    try:
        create_sampler(search.sampler, space.grid)
    except Exception as exc:  # the sampler's own validation of its options
        problems.append(("search.sampler", f"invalid options: {exc}"))
    try:
        create_pruner(search.pruner)
    except Exception as exc:
        problems.append(("search.pruner", f"invalid options: {exc}"))


def parse_spec(raw: Any, source: str = "", overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Validate a loaded YAML document.

    Args:
        raw: the YAML document (yaml_file.read_yaml).
        source: the file name, for messages.
        overrides: command-line values: `study`, `data_root`, `n_trials`, `timeout`, `budget_epochs`.

    Raises:
        SpecError: with every problem found, each naming its YAML path.
    """
    overrides = overrides or {}
    problems: Problems = []
    if not isinstance(raw, dict):
        raise SpecError(source, [("", "must be a YAML mapping with keys " + ", ".join(TOP_KEYS))])
    for key in raw:
        if key not in TOP_KEYS:
            problems.append((str(key), did_you_mean(str(key), list(TOP_KEYS))))
    study = overrides.get("study") or raw.get("study")
    if study is None:
        problems.append(("study", "missing: name the study (or pass --study NAME)"))
    elif (msg := validate_study_name(study)) is not None:
        problems.append(("study", msg))

    data, fixed_raw = _parse_fixed(raw, overrides.get("data_root"), problems)

    space = parse_space(raw.get("space"), {n: p for n, (p, _) in fixed_raw.items()}, problems)
    search = _parse_search(raw.get("search"), problems)
    search = dataclasses.replace(search, **{k: overrides[k] for k in ("n_trials", "timeout", "budget_epochs")
                                            if overrides.get(k) is not None})
    policies = _parse_policies(raw.get("augment_policies"), problems)
    fixed = {**DEFAULTS, **{n: v for n, (_, v) in fixed_raw.items()}}
    for p in space.params:
        if not p.when:  # a conditional knob keeps its fixed value for when it is not searched
            fixed.pop(p.name, None)

    _check_values(_knob_values(fixed, fixed_raw, space), policies, problems)
    enqueue = parse_enqueue(raw.get("enqueue"), space, problems)
    _check_strategies(search, space, problems)
    logging = parse_section(raw.get("logging"), problems)
    if not problems:
        spec = SweepSpec(study, data, fixed, space, search, policies, enqueue, source, logging)
        check_fits(search.budget_epochs, search.recheck, spec.max_epochs, problems)
    if problems:
        raise SpecError(source, problems)
    return SweepSpec(study, data, fixed, space, search, policies, enqueue, source, logging)


def load_spec(path: Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Read and validate a search-space file."""
    return parse_spec(read_yaml(path), str(path), overrides)
