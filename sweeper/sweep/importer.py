"""`sweeper import`: finished runs from a CSV (a column per searched parameter plus the objective)
become completed trials, so the sampler learns from work done before the sweep.

Cells are read as YAML scalars, so `0.1`, `-1`, `step` and `"[20, 40, 60]"` mean what they say. A
row is skipped, with its reason, when a value is outside the space, a needed value is missing,
or the objective is not a fraction in [0, 1]; nothing is written when the file cannot be read.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from sweeper import store
from sweeper.errors import SpecError, quoted
from sweeper.spec.knobs import BY_NAME
from sweeper.spec.space import (
    CategoricalParam,
    FloatParam,
    IntParam,
    Param,
    SearchSpace,
    choice_label,
)
from sweeper.spec.space_yaml import as_number, did_you_mean
from sweeper.spec.yaml_file import StrictLoader
from sweeper.sweep.recovery import IMPORTED

NOTE = "note"  # an optional free-text column, kept with the trial


@dataclass(frozen=True)
class Row:
    line: int  # in the file, header = 1
    params: dict[str, Any]  # as the space's values (lists for list choices)
    value: float
    note: str | None


def distribution(p: Param) -> BaseDistribution:
    """The Optuna distribution `SearchSpace.suggest` samples this parameter from."""
    if isinstance(p, CategoricalParam):
        return CategoricalDistribution(p.labels)
    if isinstance(p, IntParam):
        return IntDistribution(p.low, p.high, log=p.log, step=p.step)
    assert isinstance(p, FloatParam)
    return FloatDistribution(p.low, p.high, log=p.log, step=p.step)


def _on_grid(p: Param, value: Any) -> bool:
    """Optuna's own check (a float range with a step accepts only its grid points)."""
    dist = distribution(p)
    try:
        label = p.labels[p.labels.index(choice_label(value))] if isinstance(p, CategoricalParam) else value
        return dist._contains(dist.to_internal_repr(label))
    except ValueError:
        return False


def _cell(text: str, name: str) -> Any:
    value = yaml.load(text, Loader=StrictLoader)  # no aliases: a cell cannot expand to gigabytes
    knob = BY_NAME.get(name)
    return as_number(value) if knob is not None and knob.kind == "float" else value


def _parse_row(cells: dict[str, str], space: SearchSpace, objective: str) -> tuple[dict, float] | str:
    """(params, value), or why the row is skipped."""
    chosen: dict[str, Any] = {}
    for p in space.params:
        text = (cells.get(p.name) or "").strip()
        active = all(c.holds(chosen) for c in p.when)
        if not active:
            if text:
                conds = ", ".join(f"{c.param} in {list(c.values)}" for c in p.when)
                return f"{p.name} is set but applies only when {conds}"
            continue
        if not text:
            return f"no value for {p.name}"
        try:
            value = _cell(text, p.name)
        except yaml.YAMLError:
            return f"{p.name}={quoted(text)} cannot be read"
        if isinstance(p, FloatParam) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not p.contains(value) or not _on_grid(p, value):
            return f"{p.name}={text} is outside the space ({p.describe()})"
        chosen[p.name] = value
    text = (cells.get(objective) or "").strip()
    try:
        value = float(text)
    except ValueError:
        return f"{objective}={quoted(text)} is not a number"
    if not math.isfinite(value) or not 0 <= value <= 1:
        hint = f"; for a percentage write {value / 100:g}" if 1 < value <= 100 else ""
        return f"{objective}={text} is not a fraction in [0, 1]{hint}"
    return chosen, value


def read_results(path: Path, space: SearchSpace, objective: str) -> tuple[list[Row], list[tuple[int, str]]]:
    """The importable rows of a results CSV, and (line, reason) for each skipped one."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            records = list(reader)
    except FileNotFoundError:
        raise SpecError(str(path), [("", "file not found; pass --from path/to/results.csv")]) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SpecError(str(path), [("", f"cannot be read as CSV ({exc})")]) from None
    known = [*space.names, objective, NOTE]
    problems = [(f"column {quoted(c)}", did_you_mean(c, known)) for c in header if c not in known]
    required = [p.name for p in space.params if not p.when] + [objective]
    problems += [(f"column {quoted(c)}", "missing; the file needs a column per searched parameter "
                                   f"({', '.join(space.names)}) and the objective ({objective})")
                 for c in required if c not in header]
    if not header:
        problems = [("", "empty file; the first line must name the columns")]
    if problems:
        raise SpecError(str(path), problems)
    rows, skipped = [], []
    for i, cells in enumerate(records, start=2):
        parsed = _parse_row(cells, space, objective)
        if isinstance(parsed, str):
            skipped.append((i, parsed))
        else:
            note = (cells.get(NOTE) or "").strip() or None
            rows.append(Row(i, parsed[0], parsed[1], note))
    return rows, skipped


def as_trials(rows: list[Row], space: SearchSpace, source: str) -> list[optuna.trial.FrozenTrial]:
    trials = []
    for row in rows:
        attrs = {IMPORTED: source, "import_line": row.line}
        if row.note:
            attrs[NOTE] = row.note
        trials.append(optuna.trial.create_trial(
            params=space.to_optuna_params(row.params),
            distributions={name: distribution(space[name]) for name in row.params},
            value=row.value, user_attrs=attrs))
    return trials


def _params_key(params: dict) -> str:
    """Params as comparable text (a row imported twice has the same key)."""
    return json.dumps(params, sort_keys=True)


def import_file(spec, space_file: Path, results: Path, storage_url: str) -> tuple[int, list[tuple[int, str]]]:
    """Add the CSV's runs to the study (created if new) as completed trials; a row already
    imported from a file of that name is skipped. Returns the count added and the skipped lines."""
    rows, skipped = read_results(results, spec.space, spec.search.objective)
    study_name = spec.study
    the_storage = store.open_storage(storage_url)
    if study_name in {s.study_name for s in the_storage.get_all_studies()}:
        the_study = store.load_study(the_storage, study_name)
        theirs = the_study.user_attrs.get("objective", spec.search.objective)
        if theirs != spec.search.objective:
            raise SpecError(str(space_file), [("search.objective", f"study {quoted(study_name)} maximises "
                                               f"{theirs}, this file {spec.search.objective}; they "
                                               "cannot be mixed")])
    else:
        the_study = store.retrying(lambda: optuna.create_study(
            storage=the_storage, study_name=study_name, direction="maximize", sampler=spec.sampler(),
            pruner=spec.pruner()))
        store.retrying(lambda: the_study.set_user_attr("objective", spec.search.objective))
        store.retrying(lambda: the_study.set_user_attr("value", spec.search.value))
    source = results.name
    seen = {(_params_key(t.params), t.value) for t in the_study.get_trials(deepcopy=False)
            if t.user_attrs.get(IMPORTED) == source}
    fresh = []
    for row, trial in zip(rows, as_trials(rows, spec.space, source)):
        if (_params_key(trial.params), trial.value) in seen:
            skipped.append((row.line, "already imported"))
        else:
            fresh.append(trial)
    store.retrying(lambda: the_study.add_trials(fresh))
    store.remember_space(the_study, space_file, spec)
    return len(fresh), sorted(skipped)
