"""What a sweep shows: the live table on a terminal and key=value lines elsewhere."""

from __future__ import annotations

import io

from rich.console import Console

from sweeper.sweep.progress import LineProgress, LiveProgress


def test_live_table_shows_running_trials_counts_and_best():
    console = Console(file=io.StringIO(), force_terminal=True, width=160, record=True)
    with LiveProgress("demo", 5, "val_acc", console=console) as p:
        p.started(0, 0, {"lr": 0.1}, 4)
        p.epoch(0, 2, 0.5)
        p.started(1, 1, {"lr": 0.01}, 4)
        p.finished(0, "COMPLETE", 0.91, None)
        p.finished(1, "PRUNED", 0.2, "pruned after epoch 1")
        p.started(2, 0, {"lr": 0.3}, 4)
        p.epoch(2, 1, 0.4)
    text = console.export_text()
    assert "2/5 finished" in text and "1 complete" in text and "1 pruned" in text
    assert "best val_acc: trial 0: 0.9100" in text
    assert "trial 1: pruned 0.2000 (pruned after epoch 1)" in text
    assert "lr=0.3" in text and "1/4" in text  # trial 2 still running, at epoch 1 of 4


def test_lines_are_parseable_key_value_pairs():
    out = io.StringIO()
    p = LineProgress("demo", 2, "val_acc", stream=out)
    p.started(3, 1, {"lr": 0.1, "milestones": [20, 40]}, 4)
    p.epoch(3, 1, 0.5)
    p.finished(3, "FAIL", None, "worker killed by signal 9")
    lines = out.getvalue().splitlines()
    assert lines[0] == "trial=3 event=start slot=1 lr=0.1 milestones=[20,40]"
    assert lines[1] == 'trial=3 event=finish state=FAIL epochs=1 val_acc=- reason="worker killed by signal 9"'
