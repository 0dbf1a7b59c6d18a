"""Orchestrators that share a study judge each other by heartbeats on their own clocks: a
machine whose clock runs behind keeps its live trials, and an orchestrator whose trial another
one finished anyway drops that worker and carries on."""

from __future__ import annotations

import threading
import time

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from processes import finish, start, trials, wait_for

from sweeper.sweep import recovery
from sweeper.testing import tiny_space, write_space


def _space(cwd, folder, study, n_trials, **train):
    doc = tiny_space(folder, study=study, data={"image_size": 16, "num_workers": 0},
                     train={"epochs": 2, "batch_size": 8, **train},
                     search={"n_trials": n_trials, "sampler": {"name": "random", "seed": 0}, "pruner": "none"})
    return str(write_space(cwd / "space.yaml", doc))


@pytest.mark.slow
def test_a_live_trial_on_a_machine_whose_clock_is_a_minute_behind_is_not_recovered(colour_folder, tmp_path):
    code, out = finish(start(tmp_path, "--space", _space(tmp_path, colour_folder, "skew", 1)))
    assert code == 0, out
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/studies.db")
    study = optuna.load_study(study_name="skew", storage=storage)
    elsewhere = study.ask()  # another machine's running trial; that machine's clock is 60 s behind
    stop, lost = threading.Event(), []

    def other_machine():
        interval = 0.2
        recovery.beat(study, elsewhere._trial_id, interval)
        while not stop.wait(interval):
            try:
                storage.set_trial_user_attr(elsewhere._trial_id, recovery.HEARTBEAT, time.time() - 60)
            except UpdateFinishedTrialError:
                lost.append(time.time())  # recovered while alive
                return

    beating = threading.Thread(target=other_machine)
    beating.start()
    try:
        # this machine trains a trial of its own meanwhile, then waits for the one elsewhere
        proc = start(tmp_path, "--space", _space(tmp_path, colour_folder, "skew", 3), "--heartbeat", "0.2")
        wait_for(lambda: any(t.state == TrialState.COMPLETE for t in trials(tmp_path, "skew")[1:]),
                 what="this machine's trial")
        time.sleep(2.0)  # ten of the other machine's intervals, with its heartbeat alive
        assert proc.poll() is None and not lost, "a live trial was recovered"
    finally:
        stop.set()  # the other machine is lost now
        beating.join()
    code, out = finish(proc)
    assert code == 0, out
    assert not lost
    assert f"trial {elsewhere.number}: its orchestrator is gone" in out
    assert trials(tmp_path, "skew")[elsewhere.number].user_attrs["reason"] == "orchestrator lost"


@pytest.mark.slow
def test_a_trial_finished_by_another_orchestrator_is_dropped_and_the_sweep_goes_on(colour_folder, tmp_path):
    spec = _space(tmp_path, colour_folder, "taken", 2, epochs=3)
    proc = start(tmp_path, "--space", spec, env={"SWEEPER_INJECT_FAULT": "slow:0"})
    victim = wait_for(lambda: next((t for t in trials(tmp_path, "taken")
                                    if t.number == 0 and t.intermediate_values), None), what="trial 0's epoch 1")
    # another orchestrator judged it lost (say, by a skewed clock) and recorded it
    study = optuna.load_study(study_name="taken", storage=f"sqlite:///{tmp_path}/studies.db")
    study._storage.set_trial_user_attr(victim._trial_id, "reason", "orchestrator lost")
    study._storage.set_trial_state_values(victim._trial_id, TrialState.FAIL)
    code, out = finish(proc)
    assert code == 0, out
    assert "trial 0: finished by another orchestrator; its worker here is stopped" in out
    final = trials(tmp_path, "taken")
    assert final[0].state == TrialState.FAIL and final[0].user_attrs["reason"] == "orchestrator lost"
    assert final[1].state == TrialState.COMPLETE  # the sweep carried on
