"""The study store: an Optuna RDB storage (SQLite by default, any SQLAlchemy URL works)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from sweeper.errors import StorageError

DEFAULT_STORAGE = "sqlite:///studies.db"


def redact(url: str) -> str:
    """The URL with its password hidden, for every message and log line."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable storage URL>"


def _prepare_sqlite(url: str) -> None:
    """WAL lets readers (report, dashboard) work while a sweep writes; it persists in the file."""
    database = make_url(url).database
    if not database or database == ":memory:":
        return
    path = Path(database)
    if not path.parent.is_dir():
        raise StorageError(f"cannot open study store {redact(url)}: folder {path.parent} does not exist")
    with sqlite3.connect(path, timeout=30) as con:
        con.execute("PRAGMA journal_mode=WAL")


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Open (creating if needed) the study store; problems become one StorageError."""
    try:
        if make_url(url).get_backend_name() == "sqlite":
            _prepare_sqlite(url)
            engine_kwargs = {"connect_args": {"timeout": 30}}
        else:
            engine_kwargs = {"pool_pre_ping": True}
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except StorageError:
        raise
    except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
        raise StorageError(f"storage URL {redact(url)} is not valid ({type(exc).__name__}); "
                           "use e.g. sqlite:///studies.db or postgresql://user@host/db") from None
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StorageError(f"cannot open study store {redact(url)}: "
                           f"{reason.replace(url, redact(url))}") from None


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """Load an existing study, or say which ones exist."""
    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        known = ", ".join(names) if names else "none yet; create one with `sweeper run`"
        raise StorageError(f"study {name!r} not found in the store; studies there: {known}")
    return optuna.load_study(study_name=name, storage=storage)
