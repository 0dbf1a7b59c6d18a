"""What a sweep may spend: `search.budget.epochs`, and the re-check it plans for at the end.

`search.recheck: {top: K, seeds: S}` retrains the K best configurations with S more seeds when
the search ends (as `sweeper recheck` does), every epoch, no pruning: K * S * epochs epochs. With
an epoch budget, those are kept out of what the search may spend, so `run` stays inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sweeper.errors import quoted

Problems = list[tuple[str, str]]


@dataclass(frozen=True)
class Recheck:
    top: int
    seeds: int


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def parse_budget(raw: Any, problems: Problems) -> int | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"epochs"}:
        problems.append(("search.budget", f"must be {{epochs: N}}, got {quoted(raw)}"))
    elif not _count(raw["epochs"]):
        problems.append(("search.budget.epochs", f"must be an integer >= 1, got {quoted(raw['epochs'])}"))
    else:
        return raw["epochs"]
    return None


def parse_recheck(raw: Any, problems: Problems) -> Recheck | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"top", "seeds"}:
        problems.append(("search.recheck", f"must be {{top: K, seeds: S}} (re-check the K best "
                                           f"configurations with S more seeds), got {quoted(raw)}"))
        return None
    for key in ("top", "seeds"):
        if not _count(raw[key]):
            problems.append((f"search.recheck.{key}", f"must be an integer >= 1, got {quoted(raw[key])}"))
    return Recheck(raw["top"], raw["seeds"]) if _count(raw["top"]) and _count(raw["seeds"]) else None


def recheck_epochs(recheck: Recheck | None, epochs: int) -> int:
    return recheck.top * recheck.seeds * epochs if recheck else 0


def check_fits(budget: int | None, recheck: Recheck | None, epochs: int, problems: Problems) -> None:
    """The search must keep at least one trial's epochs once the re-check is set aside: a budget
    ends with a finished trial (sweep/reserve.py), which a smaller one would overshoot."""
    if budget is not None and recheck is None and budget < epochs:
        problems.append(("search.budget.epochs", f"{budget} is less than one trial's {epochs} epochs: the "
                                                 f"sweep ends by finishing its best trial, which would go over it; "
                                                 f"raise it to at least {epochs} or lower train.epochs"))
    kept = recheck_epochs(recheck, epochs)
    if budget is not None and recheck is not None and budget - kept < epochs:
        problems.append(("search.recheck", f"re-checking {recheck.top} configuration(s) with {recheck.seeds} "
                                           f"seed(s) takes {recheck.top} x {recheck.seeds} x {epochs} = {kept} "
                                           f"epochs of search.budget.epochs ({budget}), leaving less than one "
                                           f"trial's {epochs} for the search; raise the budget or lower top/seeds"))
