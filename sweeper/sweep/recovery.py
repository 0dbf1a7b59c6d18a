"""Heartbeats, and what happens to trials whose orchestrator is gone or was interrupted.

Every orchestrator writes a heartbeat (a timestamp user attribute) on each of its RUNNING trials
every few seconds. A RUNNING trial whose heartbeat is older than STALE_BEATS of its own declared
interval belongs to an orchestrator that died (kill -9, lost machine): any orchestrator may then
fail it ("orchestrator lost") and queue its parameters again, at most `max_retry` times. Process
ids alone cannot tell this, since orchestrators may run on other machines.
"""

from __future__ import annotations

import time

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

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
    beat) is how often it promises to beat."""
    storage = study._storage
    storage.set_trial_user_attr(trial_id, HEARTBEAT, time.time())
    if interval is not None:
        storage.set_trial_user_attr(trial_id, INTERVAL, interval)


def is_stale(trial: FrozenTrial, now: float, default_interval: float) -> bool:
    if trial.state != TrialState.RUNNING or trial.user_attrs.get(PAUSED):
        return False  # a paused trial has no owner to lose (promotion.py)
    interval = trial.user_attrs.get(INTERVAL, default_interval)
    last = trial.user_attrs.get(HEARTBEAT)
    if last is None:  # died between ask() and its first heartbeat
        last = trial.datetime_start.timestamp() if trial.datetime_start else now
    return now - last > STALE_BEATS * interval


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


def recover_stale(study: optuna.Study, max_retry: int, default_interval: float,
                  mine: set[int] = frozenset()) -> list[int]:
    """Fail (and requeue) the RUNNING trials of dead orchestrators; returns their numbers."""
    now = time.time()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number not in mine and is_stale(t, now, default_interval):
            if fail_and_requeue(study, t, "orchestrator lost", max_retry):
                recovered.append(t.number)
    return recovered
