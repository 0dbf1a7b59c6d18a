"""How `run` treats its trials: retries, time-outs, checkpoints kept, heartbeats, trackers."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Options:
    max_retry: int = 1  # times a lost or interrupted trial's params are queued again
    trial_timeout: float | None = None  # seconds without an epoch before a worker is killed
    keep_checkpoints: int = 3  # best completed trials that keep checkpoint.pth
    heartbeat: float = 10.0  # seconds between heartbeats
    logging: tuple[str, ...] = ()  # trackers beside the store: tensorboard, mlflow (tracking.py)
