"""A worker's uploads to the artifact store (artifacts.py), overlapping its next epoch.

One background thread uploads the files the training loop hands it; a file handed again before
its earlier copy started uploading is uploaded once, at its newest. The training loop only waits
where a file must be in the store before it goes on: at the end of the trial (or a pause), so
that any machine can carry on from there. A store that stays unreachable fails the trial at its
next epoch with that reason, which is resumable once the store is back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

from sweeper import artifacts
from sweeper.errors import StorageError, WorkerError
from sweeper.redaction import redact

UNREACHABLE = "artifact store unreachable"  # a reason train/resume.py counts as resumable
RESUME = artifacts.RESUME


class Uploads:
    def __init__(self, url: str | None, key: str | None, folder: Path):
        try:
            self.store = artifacts.open_store(url) if url else None
        except StorageError as exc:  # e.g. the folder is not mounted here (yet)
            raise WorkerError(f"{UNREACHABLE}: {exc}") from None
        self.key, self.folder = key, folder
        self.queued: list[str] = []
        self.done: list[str] = []  # uploaded at least once: the orchestrator records their metas
        self.seconds = 0.0  # spent uploading since the last epoch (in the background)
        self.failure: str | None = None
        self.busy = False
        self.cond = threading.Condition()
        if self.store is not None:
            threading.Thread(target=self._run, daemon=True).start()

    def submit(self, *names: str) -> None:
        if self.store is None:
            return
        with self.cond:
            self.queued += [n for n in names if n not in self.queued]
            self.cond.notify_all()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.queued:
                    self.cond.wait()
                name = self.queued.pop(0)
                self.busy = True
            start = time.perf_counter()
            try:
                self.store.put(artifacts.artifact_id(self.key, name), self.folder / name)
            except artifacts.Unreachable as exc:
                failure = str(exc)
            except FileNotFoundError:  # the local file is not written yet (a trial that failed early)
                failure, name = None, None
            except Exception as exc:  # anything else: the trial must not wait on a dead thread
                failure = f"could not upload {name}: {type(exc).__name__}: {exc}"
            else:
                failure = None
            with self.cond:
                self.seconds += time.perf_counter() - start
                if failure:
                    self.failure = self.failure or failure
                elif name and name not in self.done:
                    self.done.append(name)
                self.busy = False
                self.cond.notify_all()

    def check(self) -> None:
        """Raise the first failed upload, once the store's patience has run out."""
        if self.failure:
            raise WorkerError(f"{UNREACHABLE}: {self.failure}")

    def took(self) -> float:
        """Seconds the background thread spent uploading since the last call."""
        with self.cond:
            spent, self.seconds = self.seconds, 0.0
        return round(spent, 3)

    def drain(self, timeout: float | None = None) -> float:
        """Wait until every handed file is stored (by default, as long as the store's patience
        allows each of them and a margin); returns the seconds waited."""
        start = time.perf_counter()
        if timeout is None and self.store is not None:
            timeout = (self.store.patience + 120) * max(1, len(self.queued) + self.busy)
        with self.cond:
            done = self.cond.wait_for(lambda: (not self.queued and not self.busy) or self.failure, timeout)
        self.check()
        if not done:
            raise WorkerError(f"{UNREACHABLE}: uploads to {redact(self.store.url)} did not "
                              f"finish within {timeout:.0f} s")
        return time.perf_counter() - start

    def drain_and_die(self) -> None:
        """On SIGTERM (Ctrl-C on the sweep): the latest resume state reaches the store, then the
        worker dies of the signal, as it would have at once ("killed by signal 15": resumable)."""
        with contextlib.suppress(Exception):
            if (self.folder / RESUME).is_file():  # the signal may fall between its save and its hand-over
                self.submit(RESUME)
            self.drain(timeout=30)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
