"""Every path a command writes, and its study store, checked before any work: a path that cannot
be written is one `Error: --option: ...` (exit 2), never a traceback after minutes of decoding,
training or scoring, and never a store touched on the way."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sweeper.errors import SpecError
from sweeper.redaction import redact


def _refuse(option: str, message: str):
    raise SpecError(option, [("", message)])


def _nearest(option: str, path: Path) -> Path:
    """The path itself or its closest ancestor that exists (what a `mkdir -p` would start from)."""
    for p in (path, *path.parents):
        if os.path.lexists(p):
            if not p.exists():
                _refuse(option, f"{p} is a broken link; remove it or pass another {option}")
            return p
    return Path(".")


def _folder_writable(option: str, path: Path, folder: Path) -> None:
    """`folder` (made with its missing parents if need be) can hold new files."""
    base = _nearest(option, folder)
    if not base.is_dir():
        _refuse(option, f"{base} is a file, not a folder, so {path} cannot be written; "
                        f"pass another {option}")
    try:
        handle, probe = tempfile.mkstemp(prefix=".sweeper-write-test-", dir=base)
    except OSError as exc:
        what = "" if base == path else f", so {path} cannot be written"
        _refuse(option, f"cannot create files in {base} ({exc.strerror or exc}){what}; "
                        "pass a location you can write to")
    os.close(handle)
    os.unlink(probe)


def _file_replaceable(option: str, path: Path) -> None:
    """An existing file can be written (opened without truncating it: its bytes stay as they are)."""
    try:
        os.close(os.open(path, os.O_WRONLY))
    except OSError as exc:
        _refuse(option, f"{path} exists and cannot be replaced ({exc.strerror or exc}); "
                        f"remove it or pass another {option}")


def check_output_dir(option: str, path: Path) -> None:
    """A folder the command writes in; it and its missing parents are created later, as needed."""
    if os.path.lexists(path) and not path.is_dir():
        _refuse(option, f"{path} is a file, not a folder; move it or pass another {option}")
    _folder_writable(option, path, path)


def check_output_file(option: str, *paths: Path) -> None:
    """Files the command writes; their missing folders are created later, as the command does."""
    for path in paths:
        if path.is_dir():
            _refuse(option, f"{path} is a folder; pass a file path (e.g. {path / 'name'}{path.suffix})")
        if path.is_file():
            _file_replaceable(option, path)
        else:
            _folder_writable(option, path, path.parent)


def check_export(option: str, target: str) -> None:
    """`best --export`: a folder (one that exists, or a path ending in /) or a file."""
    if Path(target).is_dir() or target.endswith(("/", "\\")):
        check_output_dir(option, Path(target))
    else:
        check_output_file(option, Path(target))


def check_storage(url: str | None, write: bool) -> None:
    """The study store URL parses; an SQLite file's path is a file in a folder, and, for a command
    that writes to the store (`write`), both can be written. Nothing is opened or created here:
    a store that does not exist yet is open_storage's to report (or create)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from sweeper import store

    url = url or store.DEFAULT_STORAGE
    try:
        make_url(url).get_dialect()
    except ArgumentError as exc:  # unparseable, or an unknown database (NoSuchModuleError)
        _refuse("--storage", f"storage URL {redact(url)} is not valid ({type(exc).__name__}); "
                             "use e.g. sqlite:///studies.db or postgresql://user@host/db")
    path = store.sqlite_path(url)
    if path is None:
        return
    if path.is_dir():
        _refuse("--storage", f"{path} is a folder; the study store is a file in it, e.g. "
                             f"sqlite:///{path / 'studies.db'}")
    if not path.parent.is_dir():
        base = _nearest("--storage", path.parent)
        what = (f"{base} is a file, not a folder;" if base.is_file() else
                f"folder {path.parent} does not exist; create it or")
        _refuse("--storage", f"cannot open study store {redact(url)}: {what} pass another --storage")
    if write:
        # SQLite writes its journal and sweeper its lock files beside the store
        _folder_writable("--storage", path, path.parent)
        if path.is_file():
            _file_replaceable("--storage", path)
