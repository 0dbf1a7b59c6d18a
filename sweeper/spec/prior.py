"""`search.prior: {studies: [NAME, ...], top: K}`: earlier studies' best configurations as known
configurations (the prior sampler's pool, or queued first for another sampler). Read from the
study store at `run` (analyze/prior_studies.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sweeper.errors import quoted

Problems = list[tuple[str, str]]
DEFAULT_TOP = 3


@dataclass(frozen=True)
class PriorStudies:
    studies: tuple[str, ...]
    top: int = DEFAULT_TOP  # configurations taken from each study, best first (by mean where re-checked)


def parse_prior(raw: Any, problems: Problems, valid_name) -> PriorStudies | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or "studies" not in raw or set(raw) - {"studies", "top"}:
        problems.append(("search.prior", f"must be {{studies: [NAME, ...], top: K}} (the K best configurations "
                                         f"of each earlier study in the same store; top defaults to "
                                         f"{DEFAULT_TOP}), got {quoted(raw)}"))
        return None
    studies, top = raw["studies"], raw.get("top", DEFAULT_TOP)
    if not isinstance(studies, list) or not studies:
        problems.append(("search.prior.studies", f"must be a non-empty list of study names, got {quoted(studies)}"))
        return None
    bad = [(i, s) for i, s in enumerate(studies) if valid_name(s) is not None]
    for i, s in bad:
        problems.append((f"search.prior.studies[{i}]", valid_name(s)))
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        problems.append(("search.prior.top", f"must be an integer >= 1, got {quoted(top)}"))
        return None
    return None if bad else PriorStudies(tuple(studies), top)
