"""Fair CPU threads for every sweeper worker training on this host, from any orchestrator.

Two CPU trainings that each take every core slow each other down far more than 2x (thread
oversubscription: measured 20x on 2 cores), so each CPU worker registers itself in a host-wide
folder (one file per process, named by pid and process start time, so a reused pid is not
mistaken for a live worker) and uses cores / (live registered workers) threads, re-checked
between steps. Files of killed workers are removed by whoever finds them dead. A GPU worker's file
holds its GPU, so that `ensemble` and `predict` can take their share of that GPU's memory.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

RECHECK_SECONDS = 2.0  # between looks at the registry during training


def default_registry() -> Path:
    root = os.environ.get("SWEEPER_CPU_REGISTRY")
    return Path(root) if root else Path(tempfile.gettempdir()) / f"sweeper-cpu-workers-{os.getuid()}"


def host_cores() -> int:
    """The cores sweeper's CPU work shares: SWEEPER_CPU_CORES when set (the part of a machine
    that others also use), else those this process may run on (its affinity, e.g. `taskset`)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = os.cpu_count() or 1
    told = os.environ.get("SWEEPER_CPU_CORES", "").strip()
    return max(1, min(int(told), allowed)) if told.isascii() and told.isdigit() else allowed


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except FileNotFoundError:
        return None
    except OSError:
        return "?"


def _alive(entry: str) -> bool:
    pid_text, _, started = entry.partition("-")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if Path("/proc").is_dir():
        now = _start_time(pid)
        return now is not None and (now == started or "?" in (now, started))
    return pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """A process with this id exists (one we may not signal counts too)."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class CpuShare:
    """This process's share of the host's cores while it is registered."""

    def __init__(self, registry: Path | None = None, cores: int | None = None, gpu: str | None = None):
        self.registry = registry or default_registry()
        self.cores = cores or host_cores()
        self.registry.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        self.entry = self.registry / f"{pid}-{_start_time(pid) or '?'}"
        self.entry.write_text(gpu or "")
        self.threads = 0
        self.sharing = 1  # live workers at the last look
        self.last_look = 0.0

    def live(self) -> list[Path]:
        """The files of live registered workers (this one's included); dead ones' are removed."""
        found = []
        for path in self.registry.iterdir():
            if _alive(path.name):
                found.append(path)
            else:
                path.unlink(missing_ok=True)
        return found

    def workers(self) -> int:
        return max(1, len(self.live()))

    def on_gpu(self, gpu: str) -> int:
        """Live workers (this one included) registered on that GPU."""
        count = 0
        for path in self.live():
            try:
                count += path.read_text() == gpu
            except FileNotFoundError:
                pass
        return count

    def apply(self) -> int | None:
        """Set torch's threads to this process's share; returns the count if it or the number of
        workers sharing the cores changed (what the trial's log then says)."""
        self.last_look = time.monotonic()
        sharing = self.workers()
        threads = max(1, self.cores // sharing)
        if threads == self.threads and sharing == self.sharing:
            return None
        self.sharing = sharing
        if threads != self.threads:
            import torch  # here, not at import: the orchestrator counts cores without loading torch

            self.threads = threads
            torch.set_num_threads(threads)
        return threads

    def maybe_apply(self) -> int | None:
        """`apply`, at most every RECHECK_SECONDS (cheap enough to call every step)."""
        if time.monotonic() - self.last_look < RECHECK_SECONDS:
            return None
        return self.apply()

    def describe(self) -> str:
        import torch

        return (f"CPU threads: {torch.get_num_threads()} ({self.sharing} sweeper worker(s) on "
                f"{self.cores} cores)")

    def close(self) -> None:
        self.entry.unlink(missing_ok=True)

    def __enter__(self) -> "CpuShare":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
