"""search.prior: the best configurations of earlier studies in the same store, read at `run`.

Each named study gives its `top` best configurations (`sweeper best`'s order: by mean where
re-checked). Only the parameters this space searches, with values inside it, are carried over
(the rest of an earlier study's are fixed here, or gone; a value outside this space's range or
choices is named and left out); a parameter left out is drawn by the sampler. A study that does not exist, has nothing COMPLETE, or shares no searched parameter
with this space is refused, naming the key.
"""

from __future__ import annotations

from typing import Any

from sweeper import store
from sweeper.analyze.ranking import configurations
from sweeper.errors import SpecError, StorageError
from sweeper.redaction import redact
from sweeper.spec.space import CategoricalParam
from sweeper.spec.sweep_spec import SweepSpec


def known_configurations(spec: SweepSpec, storage_url: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(configurations as Optuna stores their values, notes for the user)."""
    prior = spec.search.prior
    if prior is None:
        return [], []
    problems, known, notes = [], [], []
    try:
        storage = store.open_storage(storage_url, create=False)
    except StorageError as exc:
        raise SpecError(spec.source, [("search.prior.studies", f"{exc}; the studies must be in the store "
                                                               f"this run uses ({redact(storage_url)})")]) from None
    names = {s.study_name for s in storage.get_all_studies()}
    for i, name in enumerate(prior.studies):
        key = f"search.prior.studies[{i}]"
        if name not in names:
            problems.append((key, f"no study {name!r} in {redact(storage_url)}; `sweeper studies` lists them "
                                  "(a study in another store: `sweeper import` it first)"))
            continue
        best = configurations(store.load_study(storage, name).get_trials(deepcopy=False))[: prior.top]
        if not best:
            problems.append((key, f"study {name!r} has no COMPLETE trial to take configurations from"))
            continue
        searched = set(best[0].first.params)
        shared = searched & set(spec.space.names)
        if not shared:
            problems.append((key, f"study {name!r} searched {', '.join(sorted(searched))}; this space searches "
                                  f"{', '.join(spec.space.names) or 'nothing'}: no parameter to carry over"))
            continue
        if dropped := sorted(searched - shared):
            notes.append(f"search.prior: {name}'s {', '.join(dropped)} not searched here: left out")
        for c in best:
            params = {k: v for k, v in c.first.params.items() if k in shared and _inside(spec, k, v)}
            if outside := sorted(f"{k}={v!r}" for k, v in c.first.params.items() if k in shared and k not in params):
                notes.append(f"search.prior: {name} trial {c.first.number}'s {', '.join(outside)} outside this "
                             "space: drawn anew")
            if params and params not in known:
                known.append(params)
    if problems:
        raise SpecError(spec.source, problems)
    return known, notes


def _inside(spec: SweepSpec, name: str, value: Any) -> bool:
    """Is an earlier study's value (as Optuna stores it: a categorical's label) one this space can take?"""
    p = spec.space[name]
    return value in p.labels if isinstance(p, CategoricalParam) else p.contains(value)
