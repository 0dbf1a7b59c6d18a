"""The study store: an Optuna RDB storage (SQLite by default, any SQLAlchemy URL works)."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from sweeper import atomic_files
from sweeper.errors import DataError, StorageError, quoted
from sweeper.redaction import redact

DEFAULT_STORAGE = "sqlite:///studies.db"


def sqlite_path(url: str) -> Path | None:
    url_ = make_url(url)
    if url_.get_backend_name() != "sqlite" or url_.database in (None, "", ":memory:"):
        return None
    return Path(url_.database)


# filesystems whose files other machines write too: SQLite's file locks and WAL (shared memory
# beside the file) do not hold across machines there
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre",
                       "gpfs", "beegfs", "ocfs2", "gfs2", "fuse"}


def mount_type(path: Path, mounts: str) -> str | None:
    """The filesystem type of the mount holding `path` (absolute), from /proc/mounts' text."""
    found, depth = None, -1
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        # /proc/mounts writes a space in a mount point as \040 (octal escapes)
        point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1]))
        if path.is_relative_to(point) and len(point.parts) >= depth:
            found, depth = fields[2], len(point.parts)
    return found


def check_not_shared_over_network(url: str, shared: bool, mounts: str | None = None) -> None:
    """An SQLite file on a network filesystem is refused when several machines may use it (an
    artifact store is in use): each would lock and log it on its own and corrupt it."""
    path = sqlite_path(url)
    if path is None or not shared:
        return
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:  # not Linux: nothing to tell
            return
    kind = mount_type(path.expanduser().resolve(), mounts)
    if kind is not None and (kind in NETWORK_FILESYSTEMS or kind.startswith("fuse.")):
        raise StorageError(f"study store {path} is on a network filesystem ({kind}), where SQLite's "
                           "locks do not hold across machines, and an artifact store is in use (several "
                           "machines); use PostgreSQL: --storage postgresql://user@host/db")


def _check_sqlite_path(url: str, create: bool) -> None:
    path = sqlite_path(url)
    if path is None:
        return
    if not path.parent.is_dir():
        raise StorageError(f"cannot open study store {redact(url)}: folder {path.parent} does not exist")
    if not path.exists() and not create:
        raise StorageError(f"study store {path} does not exist; run `sweeper run` first or pass "
                           "--storage URL")


def _prepare_sqlite(url: str, create: bool) -> None:
    """Check the file is a sound SQLite database (never resetting it); for a sweep, switch on
    WAL, which lets readers (report, dashboard) work while sweeps write and persists in the file.
    Read-only commands (create=False) leave the file's bytes as they are. Called under the
    store's init lock: SQLite refuses a WAL switch at once, unwaited, while another process
    is making the same switch.
    """
    path = sqlite_path(url)
    if path is None:
        return
    try:
        # mode=rw/rwc through a URI: sqlite3 never truncates or rewrites an existing file here
        uri = f"file:{path.resolve()}?mode={'rwc' if create else 'rw'}"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as con:
            check = con.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            if create and con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                con.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"study store {path} is damaged ({exc}); it was left untouched: "
                           "restore it from a backup, or pass --storage to use another file") from None


def open_storage(url: str, create: bool = True) -> optuna.storages.RDBStorage:
    """Open the study store (creating it if `create`); problems become one StorageError."""
    try:
        sqlite = make_url(url).get_backend_name() == "sqlite"
        if sqlite:
            _check_sqlite_path(url, create)
        # one process at a time: two orchestrators switching a fresh SQLite file to WAL, or
        # creating one fresh schema, would collide
        with _lock(url, "init"):
            if sqlite:
                _prepare_sqlite(url, create)
            engine_kwargs = {"connect_args": {"timeout": 30}} if sqlite else {"pool_pre_ping": True}
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except StorageError:
        raise
    except sqlalchemy.exc.ArgumentError as exc:
        raise StorageError(f"storage URL {redact(url)} is not valid ({type(exc).__name__}); "
                           "use e.g. sqlite:///studies.db or postgresql://user@host/db") from None
    except ImportError:
        raise StorageError(f"no database driver for {redact(url)}; for PostgreSQL: "
                           "pip install 'psycopg[binary]'") from None
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StorageError(redact(f"cannot open study store {url}: {reason}")) from None


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """Load an existing study, or say which ones exist."""
    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        known = ", ".join(names) if names else "none yet; create one with `sweeper run`"
        raise StorageError(f"study {name!r} not found in the store; studies there: {known}")
    return optuna.load_study(study_name=name, storage=storage)


T = TypeVar("T")
TRANSIENT = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError)


def retrying(fn: Callable[[], T], attempts: int = 8) -> T:
    """Run a store operation, retrying transient errors ("database is locked", a dropped
    connection) with backoff; the last error propagates."""
    for attempt in range(attempts):
        try:
            return fn()
        except TRANSIENT:
            if attempt == attempts - 1:
                raise
            time.sleep(min(0.1 * 2**attempt, 5.0))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _lock(url: str, name: str, engine: sqlalchemy.Engine | None = None) -> Iterator[None]:
    """A lock shared by every process using this store: a lock file beside an SQLite database
    (SQLite is single-machine anyway), an advisory lock in PostgreSQL, nothing elsewhere."""
    path = sqlite_path(url)
    if path is not None:
        with atomic_files.locked(path.with_name(f"{path.name}.{name}.lock")):
            yield
    elif make_url(url).get_backend_name() == "postgresql":
        key = zlib.crc32(f"sweeper:{name}".encode())
        own = engine is None
        engine = engine or sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as con:
                con.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    con.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            if own:
                engine.dispose()
    else:
        yield


def budget_lock(storage: optuna.storages.BaseStorage, url: str, study: str):
    """Serialise "is there budget for one more trial? then ask()" across orchestrators, so that
    several of them on one study stop at exactly n_trials. Databases other than SQLite and
    PostgreSQL get no lock and may overshoot by up to one trial per extra orchestrator."""
    return study_lock(storage, url, study, "budget")


def study_lock(storage: optuna.storages.BaseStorage, url: str, study: str, purpose: str):
    """A lock of the study's own for one purpose, shared by every orchestrator on the store."""
    engine = getattr(storage, "_backend", storage).engine  # a study wraps it in a cache
    return _lock(url, f"{purpose}-{zlib.crc32(study.encode())}", engine)


CLASSES = "classes"  # the dataset's class list: a study user attribute (a trial's, in older studies)


def check_classes(storage: optuna.storages.BaseStorage, study: str, classes: list[str]) -> None:
    """Before a run touches the study: a study is one dataset's, so another class list is refused."""
    recorded = next((s.user_attrs.get(CLASSES) for s in storage.get_all_studies() if s.study_name == study), None)
    if recorded is not None and recorded != list(classes):
        raise DataError(f"study {study!r} was trained on {len(recorded)} classes ({quoted(recorded)}); "
                        f"this dataset has {len(classes)} ({quoted(list(classes))}); point --data at the "
                        "study's dataset or pick another study name")


def remember_classes(study: optuna.Study, classes: list[str]) -> None:
    """The class list, once per study: not on every trial (10,000 class names on each of
    thousands of trials would be most of the store)."""
    if study.user_attrs.get(CLASSES) is None:
        retrying(lambda: study.set_user_attr(CLASSES, list(classes)))


def classes_of(trial, study_user_attrs: dict) -> list[str] | None:
    """The class list a trial trained on: the study's, or the trial's own in an older study."""
    return trial.user_attrs.get(CLASSES) or study_user_attrs.get(CLASSES)


def remember_space(study: optuna.Study, path: Path, spec) -> None:
    """Keep the search-space file's text in the study, so that later commands (`recheck` of an
    imported configuration) can rebuild a trial's configuration without the file."""
    retrying(lambda: study.set_user_attr("space_yaml", path.read_text(encoding="utf-8")))
    retrying(lambda: study.set_user_attr("space_source", str(path)))
    root = str(spec.data.root) if spec.data.root else None
    retrying(lambda: study.set_user_attr("data_root", root))
