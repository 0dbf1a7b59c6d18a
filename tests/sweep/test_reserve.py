"""A budget ends with an answer: the epochs the best unfinished trial needs are kept back."""

from __future__ import annotations

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from processes import finish, start, trials
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.search.asha import PAUSED
from sweeper.sweep import reserve
from sweeper.testing import tiny_space, write_space


def trial(number, values, state=TrialState.RUNNING, epochs=8, **attrs):
    t = create_trial(state=state, params={"lr": 0.1}, distributions={"lr": FloatDistribution(0.01, 1.0)},
                     value=values[max(values)] if state == TrialState.COMPLETE else None,
                     intermediate_values=values, user_attrs={"epochs": epochs, **attrs})
    t.number = number
    return t


def test_the_candidate_is_the_trial_highest_through_the_rungs_and_room_is_what_is_left():
    trials_now = [
        trial(0, {1: 0.9}, paused=True),  # best at epoch 1, but only at epoch 1
        trial(1, {1: 0.5, 2: 0.6, 3: 0.7}, paused=True),  # promoted once, paused at rung 3
        trial(2, {1: 0.4, 2: 0.5, 3: 0.65}, paused=True),
        trial(3, {1: 0.6}),  # training now
        trial(4, {1: 0.2}, TrialState.PRUNED),
    ]
    # trained: 1 + 3 + 3 + 1 + 1 = 9; trial 1 needs 8 - 3 = 5; trial 3 is mid-epoch: 1 more
    kept = reserve.plan(trials_now, budget=20)
    assert (kept.trial, kept.need, kept.room) == (1, 5, 20 - 9 - 5 - 1)
    # deciding trial 3's next epoch: it is between epochs, so nothing else is committed
    assert reserve.plan(trials_now, budget=20, deciding=3).room == 20 - 9 - 5


def test_a_better_trial_that_no_longer_fits_does_not_take_the_reserve_from_one_that_does():
    """Seen in replays (caltech20, 1-epoch baseline, budget 12, two workers): trial 0 was
    promoted at rung 1 and trained epoch 2 while trial 4 trained its first epoch, better. Kept
    for trial 4 (7 epochs to go), the sweep trained 13 epochs of 12; trial 0 still fits."""
    now = [trial(0, {1: 0.5}),  # promoted: its epoch 2 is under way
           trial(1, {1: 0.3}, paused=True), trial(2, {1: 0.2}, paused=True), trial(3, {1: 0.1}, paused=True),
           trial(4, {1: 0.9})]  # just reported its first epoch: being decided
    kept = reserve.plan(now, budget=12, deciding=4)
    assert kept.trial == 0 and 5 + kept.need <= 12  # trained 5; trial 0 needs 7
    assert kept.room < 1  # so trial 4 stops here ("budget kept for trial 0")


def test_an_epoch_under_way_counts_against_the_budget():
    budget = reserve.Budget(None, None, None)
    budget.epochs = 7
    now = [trial(0, {1: 0.5, 2: 0.5, 3: 0.5}), trial(1, {1: 0.4, 2: 0.4, 3: 0.4})]  # 6 trained, both training
    assert not budget.epochs_spent(now[:1])  # alone: epoch 4 of trial 0 is the 7th
    assert budget.epochs_spent(now, deciding=0)  # trial 1's 4th epoch is under way: the 7th
    assert not budget.epochs_spent([now[0], trial(1, {1: 0.4, 2: 0.4, 3: 0.4}, paused=True)], deciding=0)


def test_with_half_an_epoch_left_only_a_trial_paused_mid_epoch_is_promoted():
    """A half-epoch first rung leaves budgets with half an epoch to spend: a trial paused at 0.5
    fits it (to its epoch's end), one paused at a whole-epoch rung does not (a whole epoch)."""
    from sweeper.search.asha import PART_VALUES

    budget = reserve.Budget(None, None, None)
    budget.epochs, budget.part_rungs, budget.first_step = 6, (0.5,), 0.5
    done = trial(0, {e: 0.5 for e in range(1, 5)}, TrialState.COMPLETE, epochs=4)  # 4 trained
    at_two = trial(1, {1: 0.6, 2: 0.7}, paused=True)  # 2 trained: 6 of 6, nothing left
    assert not budget.fits_promotion([done, at_two], 2)
    at_two = trial(1, {1: 0.6}, paused=True)  # now 5 trained
    mid = trial(2, {}, paused=True, **{PART_VALUES: {"0.5": 0.4}})  # 5.5 trained: half an epoch left
    now = [done, at_two, mid]
    assert not budget.epochs_spent(now, step=budget.first_step)  # so the sweep is not out
    assert not budget.fits_promotion(now, 1) and budget.fits_promotion(now, 0.5)


def test_when_no_trial_fits_the_reserve_keeps_the_one_closest_to_fitting():
    """Seen in replays (4 workers, half-epoch first rung, budget 17): trial 0 was kept at epoch
    2; a new trial's start (room 0.5) left it 0.5 short, and the reserve switched to a better
    trial at epoch 2 that was 1.5 short, while trial 0 trained on: 17.5 of 17."""
    from sweeper.search.asha import PART_VALUES

    kept = trial(0, {1: 0.5, 2: 0.5})  # training its third epoch
    better = trial(9, {1: 0.6, 2: 0.6}, paused=True)
    pruned = trial(3, {}, TrialState.PRUNED, **{PART_VALUES: {"0.5": 0.1}})  # 4.5 trained in all
    now = reserve.plan([kept, better, pruned], budget=10)
    # trial 0 needs 6 (10 - 4.5 - 6 = -0.5); trial 9 needs 6 and trial 0's epoch beside it (-1.5)
    assert (now.trial, now.room) == (0, -0.5)


def test_new_trials_and_promotions_ask_the_budget_again_under_the_store_lock(tmp_path):
    """Two orchestrators that both saw room for one more epoch must not both start one: the
    budget is asked again under the lock they share, on the trials the store holds then."""
    import optuna

    from sweeper.search.asha import PAUSED
    from sweeper.spec.sweep_spec import parse_spec
    from sweeper.sweep.promotion import Promotions
    from sweeper.sweep.scheduler import SweepSource

    url = f"sqlite:///{tmp_path}/studies.db"
    spec = parse_spec(tiny_space(search={"n_trials": 5}), "tiny")
    study = optuna.create_study(study_name="tiny", storage=url, direction="maximize")
    source = SweepSource(spec, study, tmp_path / "cache", tmp_path / "trials", url, heartbeat=30)
    assert source.claim(admit=lambda: False) is None and study.get_trials() == []  # nothing asked
    trial, _ = source.claim(admit=lambda: True)
    study._storage.set_trial_user_attr(trial._trial_id, PAUSED, True)
    promotions = Promotions(study, url, tmp_path / "trials", tmp_path / "cache", None, 30, None)
    paused = study.get_trials()[0]
    assert not promotions.claim(paused, admit=lambda: False)
    assert study.get_trials()[0].user_attrs[PAUSED]  # still paused, for whoever has room later
    assert promotions.claim(paused, admit=lambda: True) and not study.get_trials()[0].user_attrs[PAUSED]


def test_no_reserve_for_a_trial_no_better_than_a_complete_one_at_its_epoch():
    done = trial(5, {e: 0.1 * e for e in range(1, 9)}, TrialState.COMPLETE)  # 0.3 at epoch 3
    worse = trial(1, {1: 0.1, 2: 0.2, 3: 0.25}, paused=True)
    better = trial(2, {1: 0.1, 2: 0.2, 3: 0.35}, paused=True)
    assert reserve.plan([done, worse], budget=40) is None
    assert reserve.plan([done, worse, better], budget=40).trial == 2


def test_the_trial_the_reserve_took_stays_its_candidate():
    """Two trials promoted together train in lockstep; the one the reserve took first trains to
    its end whatever the other reports, so the other's epochs must not be kept for it as well
    (seen in replays: both trained to the end, 18 epochs of a 12-epoch budget)."""
    taken = trial(1, {1: 0.5, 2: 0.6}, **{reserve.FINISHED_BY_RESERVE: True})
    other = trial(2, {1: 0.5, 2: 0.7})  # now higher at the same epoch
    kept = reserve.plan([taken, other], budget=10, deciding=2)
    assert (kept.trial, kept.need) == (1, 6)
    assert kept.room == 10 - 4 - 6 < 1  # trial 2 is stopped: "budget kept for trial 1"


def test_paused_trials_are_not_counted_as_training():
    a = trial(0, {1: 0.9, 2: 0.9, 3: 0.9})
    paused = [trial(n, {1: 0.1}, **{PAUSED: True}) for n in range(1, 4)]
    training = [trial(n, {1: 0.1}) for n in range(4, 6)]
    assert reserve.plan([a, *paused], 20).room == 20 - 6 - 5
    assert reserve.plan([a, *paused, *training], 20).room == 20 - 8 - 5 - 2


def test_a_timeout_is_a_budget_of_what_one_slot_can_still_train():
    candidate = trial(0, {1: 0.9, 2: 0.9}, epochs=5, paused=True)  # needs 3 more epochs
    other = trial(1, {1: 0.5}, epochs=5)  # training beside it, on another slot
    # 35 s left at 10 s an epoch: 3 epochs on the candidate's slot, exactly what it needs
    kept = reserve.tightest([candidate, other], None, seconds_left=35.0, seconds_per_epoch=10.0)
    assert (kept.trial, kept.need, kept.room) == (0, 3, 0)
    assert reserve.tightest([candidate, other], None, 45.0, 10.0).room == 1
    # with an epoch budget too, the tighter of the two decides
    assert reserve.tightest([candidate, other], 8, 45.0, 10.0).room == 8 - 3 - 3 - 1
    # an epoch budget that no longer fits the candidate beside a COMPLETE trial keeps nothing,
    # however much time is left
    done = trial(2, {e: 0.1 for e in range(1, 6)}, TrialState.COMPLETE, epochs=5)
    assert reserve.tightest([candidate, other, done], 8, 3600.0, 10.0) is None
    assert reserve.tightest([candidate, other], None, 45.0, None) is None  # no epoch timed yet


@pytest.mark.slow
def test_an_asha_budget_too_small_to_promote_still_ends_with_a_complete_trial(colour_folder, tmp_path):
    # asha with one rung at epoch 1 (eta 3) pauses the first two arrivals; 4 epochs would
    # otherwise go to three first epochs and one promoted second epoch: nothing complete
    doc = tiny_space(colour_folder, study="kept", train={"epochs": 3, "batch_size": 8},
                     search={"n_trials": 10, "sampler": {"name": "random", "seed": 0},
                             "pruner": {"name": "asha", "min_resource": 1, "reduction_factor": 3},
                             "budget": {"epochs": 4}},
                     space={"lr": [0.05, 1.0e-6, 2.0e-6]},
                     enqueue=[{"lr": 1.0e-6}, {"lr": 0.05}, {"lr": 2.0e-6}])
    code, out = finish(start(tmp_path, "--space", str(write_space(tmp_path / "space.yaml", doc))))
    assert code == 0, out
    final = trials(tmp_path, "kept")
    complete = [t for t in final if t.state == TrialState.COMPLETE]
    assert len(complete) == 1 and sum(len(t.intermediate_values) for t in final) == 4
    # after two first epochs only 4 - 2 = 2 are left: exactly what the better of the two needs
    best_first = max(final[:2], key=lambda t: t.intermediate_values[1])
    assert complete[0].number == best_first.number
    assert f"the budget's reserve finished trial {best_first.number}" in out
    assert not [t for t in final if t.state == TrialState.RUNNING]


def test_a_recheck_that_does_not_fit_the_budget_is_named(colour_folder):
    from sweeper.errors import SpecError
    from sweeper.spec.sweep_spec import parse_spec

    doc = tiny_space(colour_folder, train={"epochs": 2},
                     search={"budget": {"epochs": 5}, "recheck": {"top": 2, "seeds": 1}})
    with pytest.raises(SpecError, match=r"search.recheck: re-checking 2 configuration\(s\) with 1 seed\(s\) "
                                        r"takes 2 x 1 x 2 = 4 epochs of search.budget.epochs \(5\)"):
        parse_spec(doc, "s")
    assert parse_spec(doc, "s", {"budget_epochs": 6}).search_budget_epochs == 2


@pytest.mark.slow
def test_run_rechecks_its_winner_inside_the_epoch_budget(colour_folder, tmp_path):
    doc = tiny_space(colour_folder, study="rc", train={"epochs": 2, "batch_size": 8},
                     search={"n_trials": 10, "sampler": {"name": "random", "seed": 0}, "pruner": "none",
                             "budget": {"epochs": 7}, "recheck": {"top": 1, "seeds": 2}})
    code, out = finish(start(tmp_path, "--space", str(write_space(tmp_path / "space.yaml", doc))))
    assert code == 0, out
    final = trials(tmp_path, "rc")
    rechecks = [t for t in final if "recheck_of" in t.user_attrs]
    searched = [t for t in final if "recheck_of" not in t.user_attrs]
    # 7 - 1 x 2 x 2 = 3 epochs for the search: one trial of 2, then one epoch of a second
    assert sum(len(t.intermediate_values) for t in searched) == 3
    assert len(rechecks) == 2 and all(t.state == TrialState.COMPLETE and len(t.intermediate_values) == 2
                                      for t in rechecks)
    winner = max((t for t in searched if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert {t.user_attrs["recheck_of"] for t in rechecks} == {winner.number}
    assert f"best configuration: trial {winner.number} (val_acc mean " in out and "over 3 runs" in out


@pytest.mark.slow
def test_a_sweep_that_ends_with_every_trial_paused_finishes_the_best_one(colour_folder, tmp_path):
    # two trials, both paused at rung 1 (top 1/3 of 1 or 2 is nobody): n_trials is reached with
    # nothing COMPLETE; the one highest through the rungs is finished instead of pruned
    doc = tiny_space(colour_folder, study="last", train={"epochs": 3, "batch_size": 8},
                     search={"n_trials": 2, "sampler": {"name": "random", "seed": 0},
                             "pruner": {"name": "asha", "min_resource": 1, "reduction_factor": 3}},
                     space={"lr": [0.05, 1.0e-6]}, enqueue=[{"lr": 1.0e-6}, {"lr": 0.05}])
    code, out = finish(start(tmp_path, "--space", str(write_space(tmp_path / "space.yaml", doc))))
    assert code == 0, out
    first, second = trials(tmp_path, "last")
    best, other = sorted((first, second), key=lambda t: -t.intermediate_values[1])
    assert best.state == TrialState.COMPLETE and sorted(best.intermediate_values) == [1, 2, 3]
    assert other.state == TrialState.PRUNED and other.user_attrs["reason"] == "not promoted at rung 1"
    # the output, the summary, `sweeper trials` and `sweeper show` name the trial and say why
    why = ("finished rather than pruned: the sweep ended with no COMPLETE trial, and it is the paused "
           f"trial highest through the rungs (epoch 1, val_acc {best.intermediate_values[1]:.4f})")
    assert f"trial {best.number}: {why}" in out and f"trial {best.number} {why}" in out
    assert "budget" not in out  # no budget here: the old message blamed it
    assert best.user_attrs["reason"] == why
    db = ["--study", "last", "--storage", f"sqlite:///{tmp_path}/studies.db"]
    table = CliRunner().invoke(app, ["trials", *db], terminal_width=400)
    assert table.exit_code == 0 and "finished rather than pruned: the sweep ended with no COMPLETE" in table.output
    shown = CliRunner().invoke(app, ["show", *db, "--trial", str(best.number)])
    assert shown.exit_code == 0 and f"trial {best.number}: COMPLETE {best.value:.4f} ({why})" in shown.output


def test_a_trial_the_reserve_took_counts_all_its_remaining_epochs_against_the_budget():
    """Seen in replays (caltech20, 1-epoch baseline at 48 epochs, seed 18): the reserve took trial
    10 (it trains to its end whatever the budget); a COMPLETE trial better at its epoch then made
    the reserve plan nothing, and new trials started in epochs trial 10 was still to train: 50 of 48."""
    budget = reserve.Budget(None, None, None)
    budget.epochs = 48
    done = [trial(n, {e: 0.9 for e in range(1, 9)}, TrialState.COMPLETE) for n in range(5)]  # 40 epochs
    taken = trial(10, {1: 0.5, 2: 0.5}, **{reserve.FINISHED_BY_RESERVE: reserve.KEPT})  # 42; 6 to go
    assert reserve.in_flight(done + [taken]) == 6
    assert budget.epochs_spent(done + [taken])  # 42 + 6 = 48: a new trial's epoch would be the 49th
