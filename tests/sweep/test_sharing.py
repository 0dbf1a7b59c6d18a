"""Which out-of-memory failures are retried alone, and which devices a held retry keeps."""

from __future__ import annotations

from types import SimpleNamespace

from sweeper.sweep.sharing import ALONE, Sharing
from sweeper.sweep.worker_handle import Running, Slot

OOM = "out of memory in training step at batch_size=256: CUDA out of memory. Tried to allocate 2.00 GiB"


def _run(slot, **flags):
    return Running(SimpleNamespace(user_attrs={}, number=slot.index), None, slot, None, **flags)


def test_out_of_memory_is_retried_alone_only_when_it_may_be_the_neighbours():
    gpu = Slot(0, "3", "GPU 3")
    reason, attrs = Sharing.outcome(_run(gpu, shared=True), True, OOM, retries_left=True)
    assert reason == f"out of memory while sharing GPU 3 with other trials, retried alone: {OOM}"
    assert attrs == {ALONE: True}
    # its retry, alone, fails for good; so does a trial that never shared
    reason, attrs = Sharing.outcome(_run(gpu, alone=True), True, OOM, retries_left=True)
    assert reason.endswith("(alone on GPU 3, retried after an out-of-memory while sharing)") and attrs is None
    assert Sharing.outcome(_run(gpu), True, OOM, retries_left=True) == (OOM, None)
    # no retry left: the reason says it shared and why it was not retried
    reason, attrs = Sharing.outcome(_run(gpu, shared=True), True, OOM, retries_left=False)
    assert reason == f"{OOM} (while sharing GPU 3; no retries left)" and attrs is None
    # a trial alone that is interrupted stays alone in its retry
    assert Sharing.outcome(_run(gpu, alone=True), True, "interrupted", True) == ("interrupted", {ALONE: True})
    assert Sharing.outcome(_run(Slot(1, None), shared=True), False, None, True) == (None, None)


def test_each_device_holds_its_own_retry_until_it_is_free():
    a0, a1, b0 = Slot(0, "0"), Slot(1, "0"), Slot(2, "1")
    sharing = Sharing()
    running = {0: _run(a0), 2: _run(b0)}
    first = SimpleNamespace(user_attrs={ALONE: True}, number=7)
    second = SimpleNamespace(user_attrs={ALONE: True}, number=8)
    assert sharing.hold(a1, first, None, 0.0, running)
    assert sharing.hold(b0, second, None, 0.0, running)  # another device: both are kept
    assert [t.number for t in sharing.held_trials()] == [7, 8]
    assert not sharing.may_start(a1, running)  # GPU 0 is kept for trial 7
    assert sharing.release(a1, running) is None  # trial 0 still trains there
    del running[0]
    assert sharing.release(a1, running).trial.number == 7
    assert not sharing.hold(a1, SimpleNamespace(user_attrs={}, number=9), None, 0.0, running)  # not alone
