"""Searched parameters and `SearchSpace.suggest`, the only place that calls `trial.suggest_*`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Union

import optuna


@dataclass(frozen=True)
class Condition:
    """`when: {param: value}`: the parameter is searched only while `param` takes one of values."""

    param: str
    values: tuple[Any, ...]

    def holds(self, chosen: dict[str, Any]) -> bool:
        return self.param in chosen and chosen[self.param] in self.values


@dataclass(frozen=True)
class FloatParam:
    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None
    when: tuple[Condition, ...] = ()

    def suggest(self, trial: optuna.Trial) -> float:
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def describe(self) -> str:
        extra = " log" if self.log else (f" step {self.step}" if self.step else "")
        return f"float [{self.low}, {self.high}]{extra}"


@dataclass(frozen=True)
class IntParam:
    name: str
    low: int
    high: int
    log: bool = False
    step: int = 1
    when: tuple[Condition, ...] = ()

    def suggest(self, trial: optuna.Trial) -> int:
        return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int)
            and self.low <= value <= self.high
            and (value - self.low) % self.step == 0
        )

    def describe(self) -> str:
        extra = " log" if self.log else (f" step {self.step}" if self.step != 1 else "")
        return f"int [{self.low}, {self.high}]{extra}"


def choice_label(value: Any) -> Any:
    """Optuna stores only scalars; a list or dict choice is stored as its JSON text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


@dataclass(frozen=True)
class CategoricalParam:
    name: str
    choices: tuple[Any, ...]
    when: tuple[Condition, ...] = ()
    labels: tuple[Any, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(choice_label(c) for c in self.choices))

    def suggest(self, trial: optuna.Trial) -> Any:
        label = trial.suggest_categorical(self.name, self.labels)
        return self.choices[self.labels.index(label)]

    def contains(self, value: Any) -> bool:
        return choice_label(value) in self.labels

    def describe(self) -> str:
        return "one of " + ", ".join(str(c) for c in self.choices)


Param = Union[FloatParam, IntParam, CategoricalParam]


@dataclass(frozen=True)
class SearchSpace:
    """Parameters in an order where every condition's parameter comes first."""

    params: tuple[Param, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def __getitem__(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample the active parameters; inactive conditional ones are left out."""
        chosen: dict[str, Any] = {}
        for p in self.params:
            if all(c.holds(chosen) for c in p.when):
                chosen[p.name] = p.suggest(trial)
        return chosen

    def to_optuna_params(self, values: dict[str, Any]) -> dict[str, Any]:
        """Values as Optuna stores them (for `enqueue_trial`)."""
        return {
            name: choice_label(v) if isinstance(self[name], CategoricalParam) else v
            for name, v in values.items()
        }

    def grid(self) -> dict[str, list[Any]]:
        """Every value of every parameter, for the grid sampler (float ranges need a step)."""
        out: dict[str, list[Any]] = {}
        for p in self.params:
            if isinstance(p, CategoricalParam):
                out[p.name] = list(p.labels)
            elif isinstance(p, IntParam):
                out[p.name] = list(range(p.low, p.high + 1, p.step))
            else:
                assert p.step is not None, "validated in spec"
                n = int(round((p.high - p.low) / p.step))
                out[p.name] = [round(p.low + i * p.step, 12) for i in range(n + 1)]
        return out
