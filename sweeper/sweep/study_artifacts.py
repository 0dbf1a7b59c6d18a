"""A sweep joining a study with an artifact store: which store the study uses, and its split.

The study records its store's URL (user attribute `artifacts`), so later commands on any machine
find trials' files without being told, and its split lists (a study artifact): a machine whose
copy of the data splits differently would train and score on other images, so it is refused
before any trial starts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna

from sweeper import artifacts, store
from sweeper.artifacts import ArtifactStore
from sweeper.data import datasets
from sweeper.errors import DataError, StorageError
from sweeper.redaction import redact

ORCHESTRATOR_PATIENCE = 10.0  # seconds: well inside a heartbeat's staleness (recovery.STALE_BEATS)


def open_for_run(option: str | None, probe: bool = True) -> ArtifactStore | None:
    """The store `run`/`recheck` uploads to (option, else SWEEPER_ARTIFACTS), checked writable
    with a probe that is written, read back and removed."""
    url = artifacts.url_for(option)
    if not url:
        return None
    found = artifacts.open_store(url, patience=min(ORCHESTRATOR_PATIENCE, artifacts.default_patience()))
    if probe:
        found.check()
    return found


def recorded_in(storage_url: str, study: str) -> str | None:
    """The store an existing study records, read before this sweep touches the study, so that a
    machine joining without --artifacts has it checked before any work."""
    try:
        storage = store.open_storage(storage_url, create=False)
    except StorageError:
        return None  # no study store yet: a new study
    found = [s for s in storage.get_all_studies() if s.study_name == study]
    return found[0].user_attrs.get("artifacts") if found else None


def join(study: optuna.Study, found: ArtifactStore | None) -> ArtifactStore | None:
    """Record the store in the study (the first one used), or use the one the study recorded
    when none was given; returns the store this sweep uploads to."""
    recorded = study.user_attrs.get("artifacts")
    if found is None and recorded:
        found = open_for_run(recorded)
    elif found is not None and recorded and found.url != recorded:
        print(f"warning: study {study.study_name!r} keeps its trials' files in {redact(recorded)}; "
              f"this run stores them in {redact(found.url)}, which other machines read only if "
              "it is the same store (mounted elsewhere)", file=sys.stderr)
    if found is not None and not recorded:
        store.retrying(lambda: study.set_user_attr("artifacts", found.url))
    if found is not None and not study.user_attrs.get(artifacts.KEY):
        key = artifacts.new_key()
        store.retrying(lambda: study.set_user_attr(artifacts.KEY, key))
    return found


def share_split(study: optuna.Study, found: ArtifactStore, cache: Path) -> None:
    """Store the study's split lists once; refuse a machine whose data splits differently."""
    local = datasets.split_path(cache)
    if not local.is_file():  # a built-in dataset: the same everywhere
        return
    mine = json.loads(local.read_text())
    key = store.retrying(lambda: study._storage.get_study_user_attrs(study._study_id))[artifacts.KEY]
    ident = artifacts.artifact_id(key, artifacts.SPLIT)
    recorded = artifacts.recorded(store.retrying(lambda: study._storage.get_study_system_attrs(study._study_id)))
    if artifacts.SPLIT in recorded:
        theirs = found.get(recorded[artifacts.SPLIT])
        if theirs is not None:
            theirs = json.loads(theirs)
            differ = [part for part in ("classes", "train", "val") if theirs[part] != mine[part]]
            if differ:
                raise DataError(f"the data here ({mine['root']}) splits differently from study "
                                f"{study.study_name!r}'s ({theirs['root']}): its {', '.join(differ)} "
                                "lists differ; give this machine the same images (--data)")
            return
    found.put(ident, local)
    name, value = artifacts.meta(key, artifacts.SPLIT)
    store.retrying(lambda: study._storage.set_study_system_attr(study._study_id, name, value))
