"""Files replaced whole or not at all: a reader (another process, another machine on a shared
disk) sees the old file or the new one, never half of one, and a failed write leaves nothing.
And a lock file, for what is written once by whichever process comes first.

The temporary file sits beside the target (a rename within one folder is atomic) under a name no
other writer can share: host, process id and random bits (containers are all PID 1, machines on
an NFS mount all see the same folder). Its data is flushed to disk before the rename, so a
crash after it cannot leave the new name on an empty file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Iterator

TMP_SUFFIX = ".tmp"


def temporary_name(path: Path) -> Path:
    host = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname())[:40]
    return path.with_name(f".{path.name}.{host}.{os.getpid()}.{secrets.token_hex(6)}{TMP_SUFFIX}")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yields a temporary path to write; on leaving, it is flushed and renamed onto `path`
    (on an error, removed)."""
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if missing) for every process on this
    machine (and on an NFS mount that supports locks)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def user_cache_dir() -> Path:
    """sweeper's per-machine cache (the bf16 verdict, the timm catalog): XDG_CACHE_HOME or ~/.cache."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sweeper"
