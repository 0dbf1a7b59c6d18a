"""Heartbeats, and what happens to trials whose orchestrator is gone or was interrupted.

Every orchestrator writes a heartbeat (its clock's time, a user attribute) on each of its
RUNNING trials every few seconds. Another orchestrator judges staleness on its own monotonic
clock: a RUNNING trial whose heartbeat it has seen unchanged for STALE_BEATS of the writer's
declared interval belongs to an orchestrator that died (kill -9, lost machine), and it may then
fail it ("orchestrator lost") and queue its parameters again, at most `max_retry` times. No two
machines' clocks are compared (one that runs 60 s behind does not lose its live trials), and
process ids alone cannot tell this, since orchestrators may run on other machines. An
orchestrator that finds one of its trials finished by another anyway drops that worker and
carries on (orchestrator.py).
"""

from __future__ import annotations

import math
import time

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from sweeper import store
from sweeper.search.asha import PAUSED

STALE_BEATS = 5  # missed heartbeats before a trial counts as abandoned
HEARTBEAT = "heartbeat"
INTERVAL = "heartbeat_interval"
RETRIES = "retries"
REQUEUED = "requeued"
RECHECK_OF = "recheck_of"  # a re-check run of that trial's configuration with another seed
IMPORTED = "imported"  # a finished run imported from a CSV (the file's name)


def beat(study: optuna.Study, trial_id: int, interval: float | None = None) -> None:
    """Record that the trial's orchestrator is alive; `interval` (declared once, at the first
    beat) is how often it promises to beat. The value is this machine's time, for people to
    read; other orchestrators only see whether it changed (Watch), never compare it with theirs."""
    storage = study._storage
    storage.set_trial_user_attr(trial_id, HEARTBEAT, time.time())
    if interval is not None:
        storage.set_trial_user_attr(trial_id, INTERVAL, interval)


class Watch:
    """Other orchestrators' RUNNING trials as this one saw their heartbeats: the value last seen
    and when (this process's monotonic clock) it was first seen."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[object, float]] = {}

    def is_stale(self, trial: FrozenTrial, default_interval: float, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if trial.state != TrialState.RUNNING or trial.user_attrs.get(PAUSED):
            self.seen.pop(trial._trial_id, None)
            return False  # a paused trial has no owner to lose (promotion.py)
        value = trial.user_attrs.get(HEARTBEAT)  # None: died between ask() and its first beat
        seen = self.seen.get(trial._trial_id)
        if seen is None or seen[0] != value:
            self.seen[trial._trial_id] = (value, now)
            return False
        interval = trial.user_attrs.get(INTERVAL, default_interval)
        if not isinstance(interval, (int, float)) or not 0 < interval < 3600:
            interval = default_interval  # an attribute others can write: bounded
        return now - seen[1] > STALE_BEATS * interval


def retries_left(attrs: dict, max_retry: int) -> bool:
    return attrs.get(RETRIES, 0) < max_retry


def fail_and_requeue(study: optuna.Study, trial: FrozenTrial, reason: str, max_retry: int,
                     retry_attrs: dict | None = None, free: bool = False) -> bool:
    """Record the trial FAIL with `reason` and queue its params again if retries remain.

    Returns False when another orchestrator finished the trial first (then nothing is queued,
    so two orchestrators recovering the same trial do not queue it twice). `free`: the trial never
    started (a retry held back for its device), so queuing it again uses up no retry.
    """
    storage = study._storage
    retries = trial.user_attrs.get(RETRIES, 0)
    # a re-check is planned again by the next `sweeper recheck`, never queued for `run`
    requeue = bool(trial.params) and (free or retries < max_retry) and RECHECK_OF not in trial.user_attrs
    try:
        storage.set_trial_user_attr(trial._trial_id, "reason", reason)
        storage.set_trial_user_attr(trial._trial_id, REQUEUED, requeue)
        if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    if requeue:
        study.enqueue_trial(trial.params, user_attrs={RETRIES: retries + (not free), "retry_of": trial.number,
                                                      **(retry_attrs or {})})
    return True


def counts_toward_budget(trial: FrozenTrial) -> bool:
    """n_trials counts the sweep's own trials: a failed attempt whose params were queued again is
    replaced by its retry, and imported runs and re-checks are not the sampler's trials."""
    attrs = trial.user_attrs
    return (trial.state.is_finished() and not attrs.get(REQUEUED, False)
            and IMPORTED not in attrs and RECHECK_OF not in attrs)


def recover_stale(study: optuna.Study, max_retry: int, default_interval: float, watch: Watch,
                  mine: set[int] = frozenset()) -> list[int]:
    """Fail (and requeue) the RUNNING trials of dead orchestrators; returns their numbers."""
    recovered = []
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for gone in set(watch.seen) - {t._trial_id for t in running}:
        del watch.seen[gone]
    for t in running:
        if t.number not in mine and watch.is_stale(t, default_interval):
            if fail_and_requeue(study, t, "orchestrator lost", max_retry):
                recovered.append(t.number)
    return recovered


class Heartbeats:
    """An orchestrator's side of heartbeats: it beats its own trials every `interval` seconds
    and recovers the trials of orchestrators it finds gone."""

    def __init__(self, study: optuna.Study, interval: float, max_retry: int):
        self.study, self.interval, self.max_retry = study, interval, max_retry
        self.last, self.watch = -math.inf, Watch()

    def due(self) -> bool:
        if time.monotonic() - self.last < self.interval:
            return False
        self.last = time.monotonic()
        return True

    def beat(self, trials: list[optuna.Trial]) -> list[optuna.Trial]:
        """Beat each trial; returns those another orchestrator has finished meanwhile."""
        finished = []
        for trial in trials:
            try:
                store.retrying(lambda: beat(self.study, trial._trial_id))
            except UpdateFinishedTrialError:
                finished.append(trial)
        return finished

    def recover(self, mine: set[int]) -> list[int]:
        return store.retrying(lambda: recover_stale(self.study, self.max_retry, self.interval, self.watch, mine))
