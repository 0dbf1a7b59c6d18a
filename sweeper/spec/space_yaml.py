"""The `space:` and `enqueue:` sections of a search-space file -> SearchSpace and queued params."""

from __future__ import annotations

import difflib
from typing import Any

from sweeper.errors import quoted
from sweeper.spec.knobs import BY_NAME
from sweeper.spec.space import (
    CategoricalParam,
    Condition,
    FloatParam,
    IntParam,
    Param,
    SearchSpace,
)

Problems = list[tuple[str, str]]


def did_you_mean(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {quoted(close[0])}? " if close else ""
    return f"unknown key; {hint}valid keys here: {', '.join(valid)}"


def as_number(value: Any) -> Any:
    """YAML 1.1 reads `1e-4` as a string; accept it as the number the user meant."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_when(raw: Any, path: str, problems: Problems) -> tuple[Condition, ...]:
    if not isinstance(raw, dict) or not raw:
        problems.append((path, "must map a parameter to a value or list, e.g. {schedule: step}"))
        return ()
    return tuple(
        Condition(str(k), tuple(v) if isinstance(v, list) else (v,)) for k, v in raw.items()
    )


def parse_param(name: str, raw: Any, problems: Problems) -> Param | None:
    path = f"space.{name}"
    knob = BY_NAME[name]
    if isinstance(raw, list):
        raw = {"choices": raw}
    if not isinstance(raw, dict):
        problems.append((path, "must be a list of choices, {choices: [...]} or {low: ..., high: ...}"))
        return None
    allowed = {"choices", "when"} if "choices" in raw else {"low", "high", "log", "step", "when"}
    for key in raw:
        if key not in allowed:
            problems.append((f"{path}.{key}", did_you_mean(str(key), sorted(allowed))))
    when = parse_when(raw["when"], f"{path}.when", problems) if "when" in raw else ()
    n_before = len(problems)
    if "choices" in raw:
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            problems.append((f"{path}.choices", "must be a non-empty list"))
            return None
        for i, c in enumerate(choices):
            c = as_number(c) if knob.kind == "float" else c
            if (msg := knob.check(c)) is not None:
                problems.append((f"{path}.choices[{i}]", msg))
        choices = [as_number(c) if knob.kind == "float" else c for c in choices]
        return CategoricalParam(name, tuple(choices), when) if len(problems) == n_before else None
    if knob.kind not in ("int", "float"):
        problems.append((path, f"{name} is not numeric; list its choices instead"))
        return None
    low, high = as_number(raw.get("low")), as_number(raw.get("high"))
    log, step = raw.get("log", False), as_number(raw.get("step"))
    for key, v in (("low", low), ("high", high)):
        if v is None:
            problems.append((f"{path}.{key}", "missing"))
        elif (msg := knob.check(v)) is not None:
            problems.append((f"{path}.{key}", msg))
    if not isinstance(log, bool):
        problems.append((f"{path}.log", f"must be true or false, got {quoted(log)}"))
    if step is not None and (not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0):
        problems.append((f"{path}.step", f"must be a number > 0, got {quoted(step)}"))
    if len(problems) > n_before:
        return None
    if low > high:
        problems.append((f"{path}.low", f"must be <= high ({low} > {high})"))
    if log and low <= 0:
        problems.append((f"{path}.low", "must be > 0 when log is true"))
    if log and step is not None:
        problems.append((f"{path}.step", "cannot be combined with log: true"))
    if len(problems) > n_before:
        return None
    if knob.kind == "int":
        if step is not None and not isinstance(step, int):
            problems.append((f"{path}.step", f"must be an integer for {name}"))
            return None
        return IntParam(name, low, high, log, step or 1, when)
    return FloatParam(name, float(low), float(high), log, step, when)


def order_by_conditions(params: list[Param], problems: Problems) -> tuple[Param, ...]:
    """Topological order so a condition's parameter is sampled before the one it gates."""
    names = {p.name for p in params}
    for p in params:
        for c in p.when:
            if c.param not in names:
                problems.append((f"space.{p.name}.when.{c.param}",
                                 f"not a searched parameter; searched: {', '.join(sorted(names))}"))
            elif c.param == p.name:
                problems.append((f"space.{p.name}.when", "a parameter cannot depend on itself"))
    ordered: list[Param] = []
    pending = list(params)
    while pending:
        ready = [p for p in pending if all(c.param not in {q.name for q in pending} or
                                           c.param == p.name for c in p.when)]
        if not ready:
            problems.append(("space", "conditions form a cycle: " +
                             ", ".join(p.name for p in pending)))
            return tuple(ordered + pending)
        ordered += ready
        pending = [p for p in pending if p not in ready]
    return tuple(ordered)


def parse_space(raw: Any, fixed_at: dict[str, str], problems: Problems) -> SearchSpace:
    if raw is None:
        return SearchSpace()
    if not isinstance(raw, dict):
        problems.append(("space", "must map knob names to ranges or choices"))
        return SearchSpace()
    params = []
    for name, value in raw.items():
        name = str(name)
        if name not in BY_NAME:
            problems.append((f"space.{name}", did_you_mean(name, sorted(BY_NAME))))
        elif name in fixed_at:
            problems.append((f"space.{name}", f"fixed at {fixed_at[name]} and searched here; "
                                              "remove one of the two"))
        elif (p := parse_param(name, value, problems)) is not None:
            params.append(p)
    return SearchSpace(order_by_conditions(params, problems))


def parse_enqueue(raw: Any, space: SearchSpace, problems: Problems) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append(("enqueue", "must be a list of {param: value} mappings"))
        return ()
    out = []
    for i, entry in enumerate(raw):
        path = f"enqueue[{i}]"
        if not isinstance(entry, dict) or not entry:
            problems.append((path, "must be a non-empty {param: value} mapping"))
            continue
        for key, value in entry.items():
            if key not in space.names:
                problems.append((f"{path}.{key}", f"not a searched parameter; searched: "
                                                  f"{', '.join(space.names) or '(none)'}"))
            elif not space[key].contains(as_number(value) if BY_NAME[key].kind == "float" else value):
                problems.append((f"{path}.{key}", f"{quoted(value)} is outside the space "
                                                  f"({space[key].describe()})"))
        out.append({k: as_number(v) if BY_NAME.get(k) and BY_NAME[k].kind == "float" else v
                    for k, v in entry.items()})
    return tuple(out)
