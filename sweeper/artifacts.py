"""The artifact store: what trials leave, in one place that every machine of a study can reach.

Without `--artifacts` (or SWEEPER_ARTIFACTS) nothing is stored beyond each machine's `trials/`
folder. With it, a folder (Optuna's FileSystemArtifactStore, e.g. on NFS) or `s3://bucket/prefix`
(Optuna's Boto3ArtifactStore; endpoint and credentials from boto3's usual sources, such as
AWS_ENDPOINT_URL) holds each trial's latest resume state, its checkpoint, metrics.csv,
config.json, classes.txt and log, and the study's split lists.

Each trial gets a key (a random hex string, user attribute `artifact_key`); its files are the
artifacts `<key>-<hex code of the filename>`, overwritten in place, so the store holds one copy of each. The study
records the lasting ones as Optuna artifact metas (trial system attributes `artifacts:<id>`, which
optuna-dashboard lists); the resume state is transient and found by its key alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import mimetypes
import os
import queue
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, TypeVar
from urllib.parse import urlparse

from sweeper import atomic_files
from sweeper.errors import StorageError
from sweeper.redaction import redact

ENV = "SWEEPER_ARTIFACTS"
PATIENCE_ENV = "SWEEPER_ARTIFACT_PATIENCE"  # seconds of retrying an unreachable store (default 60)
META_PREFIX = "artifacts:"  # optuna.artifacts' own attribute prefix, so optuna-dashboard lists them
KEY = "artifact_key"  # trial user attribute
RESUME = "resume.pt"
SPLIT = "split.json"
T = TypeVar("T")


class Unreachable(StorageError):
    """The store did not answer within its patience (or refused: no such bucket, no access)."""


_ID = re.compile(r"[0-9a-f][0-9a-f-]*")


def is_id(artifact_id: str) -> bool:
    """An artifact id is hex digits and dashes only (what `artifact_id` makes): an id read from a
    study (a meta, a user attribute) can name nothing outside the store's folder or prefix."""
    return isinstance(artifact_id, str) and bool(_ID.fullmatch(artifact_id))


def checked_id(artifact_id: str) -> str:
    if not is_id(artifact_id):
        raise StorageError(f"artifact id {artifact_id!r} is not one sweeper made (hex digits and "
                           "dashes); the study's attributes were altered")
    return artifact_id


class _AtomicFolder:
    """FileSystemArtifactStore, with writes that a kill cannot leave half done (the resume state
    is overwritten after every epoch)."""

    def __init__(self, base: Path):
        from optuna.artifacts import FileSystemArtifactStore

        self.inner, self.base = FileSystemArtifactStore(base), base

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.inner.open_reader(artifact_id)

    def write(self, artifact_id: str, body: BinaryIO) -> None:
        with atomic_files.replacing(self.base / artifact_id) as tmp, open(tmp, "wb") as out:
            shutil.copyfileobj(body, out)

    def remove(self, artifact_id: str) -> None:
        self.inner.remove(artifact_id)


class _UnderPrefix:
    """s3://bucket/prefix: Boto3ArtifactStore keys under the prefix."""

    def __init__(self, inner, prefix: str):
        self.inner, self.prefix = inner, prefix

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.inner.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, body: BinaryIO) -> None:
        self.inner.write(self.prefix + artifact_id, body)

    def remove(self, artifact_id: str) -> None:
        self.inner.remove(self.prefix + artifact_id)


def default_patience() -> float:
    return float(os.environ.get(PATIENCE_ENV, 60))


def _refused(exc: Exception) -> bool:
    """An answer that waiting will not change (no such bucket, access denied), unlike a dropped
    connection or a busy server."""
    status = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    no_credentials = type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError")
    return isinstance(exc, PermissionError) or no_credentials or (
        status is not None and 400 <= status < 500 and status not in (408, 429))


class ArtifactStore:
    """One artifact store, retried with backoff while it does not answer."""

    def __init__(self, url: str, backend, patience: float | None = None):
        self.url, self.backend = url, backend
        self.patience = patience if patience is not None else default_patience()
        self._removals: queue.Queue[str | None] | None = None

    def _retrying(self, what: str, fn: Callable[[], T], reading: bool = False) -> T:
        """fn(), retried with backoff; reading: a missing artifact is an answer, not a failure
        (when writing, a missing folder is the store's fault)."""
        from optuna.artifacts.exceptions import ArtifactNotFound

        deadline, delay = time.monotonic() + self.patience, 0.2
        while True:
            try:
                return fn()
            except Exception as exc:
                if reading and isinstance(exc, (ArtifactNotFound, FileNotFoundError)):
                    raise
                if _refused(exc) or time.monotonic() + delay > deadline:
                    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    raise Unreachable(redact(f"artifact store {self.url} unreachable ({what}): {reason}")) from None
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def put(self, artifact_id: str, path: Path) -> None:
        data = path.read_bytes()  # a missing local file is the caller's, not the store's
        self.put_bytes(artifact_id, data)

    def put_bytes(self, artifact_id: str, data: bytes) -> None:
        checked_id(artifact_id)
        self._retrying(f"writing {artifact_id}", lambda: self.backend.write(artifact_id, io.BytesIO(data)))

    def get(self, artifact_id: str) -> bytes | None:
        """The artifact's bytes, or None when the store has no such artifact."""
        from optuna.artifacts.exceptions import ArtifactNotFound

        checked_id(artifact_id)

        def read() -> bytes:
            reader = self.backend.open_reader(artifact_id)
            try:
                return reader.read()
            finally:
                reader.close()
        try:
            return self._retrying(f"reading {artifact_id}", read, reading=True)
        except (ArtifactNotFound, FileNotFoundError):
            return None

    def exists(self, artifact_id: str) -> bool:
        from optuna.artifacts.exceptions import ArtifactNotFound

        checked_id(artifact_id)
        try:  # opened, not read: S3 streams the body
            self._retrying(f"reading {artifact_id}", lambda: self.backend.open_reader(artifact_id).close(), True)
            return True
        except (ArtifactNotFound, FileNotFoundError):
            return False

    def remove(self, artifact_id: str) -> None:
        from optuna.artifacts.exceptions import ArtifactNotFound

        checked_id(artifact_id)
        try:
            self._retrying(f"removing {artifact_id}", lambda: self.backend.remove(artifact_id), True)
        except (ArtifactNotFound, FileNotFoundError):
            pass

    def remove_later(self, artifact_id: str) -> None:
        """Remove in the background: the orchestrator's loop (and its heartbeats) never waits
        on a store that is slow to answer. `flush` waits for what is queued."""
        if self._removals is None:
            self._removals = queue.Queue()
            threading.Thread(target=self._remove_queued, daemon=True).start()
        self._removals.put(artifact_id)

    def _remove_queued(self) -> None:
        while True:
            ident = self._removals.get()
            try:
                self.remove(ident)
            except StorageError:
                pass  # unreachable: left in the store, an orphan never read again
            finally:
                self._removals.task_done()

    def flush(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self._removals is not None and self._removals.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)

    def check(self) -> None:
        """Write, read back and remove a probe: a store that cannot is refused before any work."""
        probe = f"{uuid.uuid4().hex}-0"
        try:
            self.put_bytes(probe, b"ok")
            if self.get(probe) != b"ok":
                raise Unreachable(f"artifact store {redact(self.url)}: a probe written there did not read back")
            self.remove(probe)
        except Unreachable as exc:
            raise StorageError(f"--artifacts: {exc}; check the folder or bucket, the endpoint "
                               "(AWS_ENDPOINT_URL) and credentials") from None


def open_store(url: str, patience: float | None = None) -> ArtifactStore:
    """A folder path or s3://bucket/prefix; a malformed URL or missing folder is a StorageError."""
    parsed = urlparse(url)
    if redact(url) != url:  # the study records the URL, where optuna-dashboard shows it
        raise StorageError(f"--artifacts {redact(url)}: credentials do not belong in the URL (the "
                           "study records it); give them as boto3 reads them (AWS_ACCESS_KEY_ID, "
                           "AWS_SECRET_ACCESS_KEY, ~/.aws/credentials)")
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"--artifacts {url}: no bucket; use s3://bucket/prefix")
        try:
            import boto3
            from optuna.artifacts import Boto3ArtifactStore
        except ImportError:
            raise StorageError("--artifacts s3://...: boto3 is not installed; "
                               "pip install 'sweeper[s3]' (or pip install boto3)") from None
        from botocore.config import Config

        prefix = parsed.path.strip("/")
        # bounded attempts, so that the store's patience (not botocore's) decides when to give up
        config = Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 2, "mode": "standard"})
        try:
            client = boto3.client("s3", config=config)
        except Exception as exc:  # a malformed AWS_ENDPOINT_URL or region
            raise StorageError(redact(f"--artifacts {url}: boto3 cannot make an S3 client "
                                      f"({type(exc).__name__}: {exc}); check AWS_ENDPOINT_URL and "
                                      "AWS_DEFAULT_REGION")) from None
        backend = Boto3ArtifactStore(parsed.netloc, client=client)
        return ArtifactStore(url, _UnderPrefix(backend, f"{prefix}/" if prefix else ""), patience)
    if parsed.scheme not in ("", "file"):
        raise StorageError(f"--artifacts {url}: use a folder path or s3://bucket/prefix")
    folder = Path(parsed.path if parsed.scheme == "file" else url).expanduser().resolve()
    if not folder.is_dir():
        raise StorageError(f"--artifacts: folder {folder} does not exist; create it (on a disk "
                           "every machine of the study mounts) or pass another")
    return ArtifactStore(str(folder), _AtomicFolder(folder), patience)


def new_key() -> str:
    return uuid.uuid4().hex


def artifact_id(key: str, filename: str) -> str:
    """`<key>-<hex of the filename>`: optuna-dashboard serves only ids of hex digits and dashes."""
    checked_id(key)  # a key read back from the study
    return f"{key}-{hashlib.sha1(filename.encode()).hexdigest()[:12]}"


def meta(key: str, filename: str) -> tuple[str, str]:
    """The system attribute that records one stored file as an Optuna artifact."""
    guess, encoding = mimetypes.guess_type(filename)
    ident = artifact_id(key, filename)
    return META_PREFIX + ident, json.dumps({"artifact_id": ident, "filename": filename,
                                            "mimetype": guess or "application/octet-stream",
                                            "encoding": encoding})


def recorded(system_attrs: dict) -> dict[str, str]:
    """{filename: artifact id} of the artifacts a trial's (or study's) metas record."""
    out = {}
    for name, value in system_attrs.items():
        if name.startswith(META_PREFIX):
            found = json.loads(value)
            out[found["filename"]] = found["artifact_id"]
    return out


def url_for(option: str | None, recorded_url: str | None = None) -> str | None:
    """The store to use: the option, else SWEEPER_ARTIFACTS, else the one the study recorded."""
    return option or os.environ.get(ENV) or recorded_url


class TrialFiles:
    """What a trial left, read from the artifact store where the study recorded it there, else
    from the trial's folder on this machine. The store is opened at the first read."""

    def __init__(self, url: str | None):
        self.url, self._store = url, None

    @property
    def store(self) -> ArtifactStore | None:
        if self._store is None and self.url:
            self._store = open_store(self.url)
        return self._store

    def _stored(self, trial, filename: str) -> str | None:
        """The artifact id of a file the study recorded in a store this reader can open."""
        stored = recorded(trial.system_attrs).get(filename)
        return stored if stored is not None and self.url else None

    def read(self, trial, filename: str) -> bytes | None:
        if (stored := self._stored(trial, filename)) is not None:
            return self.store.get(stored)  # Unreachable is a StorageError: one `Error:` line
        folder = trial.user_attrs.get("trial_dir")
        path = Path(folder) / filename if folder else None
        if path is not None and path.is_file():
            return path.read_bytes()
        if recorded(trial.system_attrs).get(filename):
            raise StorageError(f"trial {trial.number}'s {filename} is in an artifact store; pass "
                               f"--artifacts URL (or set {ENV}) to read it")
        return None

    def has(self, trial, filename: str) -> bool:
        if (stored := self._stored(trial, filename)) is not None:
            return self.store.exists(stored)  # Unreachable is a StorageError: one `Error:` line
        folder = trial.user_attrs.get("trial_dir")
        return bool(folder) and (Path(folder) / filename).is_file()

    def where(self, trial, filename: str | None = None) -> str:
        """Where the trial's files (or one of them) are, in words."""
        if recorded(trial.system_attrs) and self.url:
            place = f"artifact store {redact(self.url)}, key {trial.user_attrs.get(KEY)}"
            return f"{place}: {filename}" if filename else place
        folder = trial.user_attrs.get("trial_dir")
        return str(Path(folder) / filename) if filename else f"folder: {folder}"


def for_study(study, option: str | None) -> TrialFiles:
    """The reader for a study's trials: --artifacts, else SWEEPER_ARTIFACTS, else the store the
    study's sweeps recorded."""
    return TrialFiles(url_for(option, study.user_attrs.get("artifacts")))
