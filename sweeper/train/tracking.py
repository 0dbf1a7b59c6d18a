"""A trial's curves in TensorBoard, written by its worker as each epoch ends (opt-in: `logging:
{tensorboard: true}`). The event files go straight into the trial's folder, so `tensorboard
--logdir trials/<study>` lists the trials as runs named by their numbers; the orchestrator adds
the trial's hparams when it ends (sweep/tracking.py). Logging never fails a trial: a writer error
is noted in log.txt and training goes on without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

from sweeper.redaction import redact
from sweeper.spec.trial_config import TrialConfig

# the worker's per-epoch record -> the scalar's tag (TensorBoard groups tags by their prefix)
SCALARS = {"train_loss": "train/loss", "lr": "train/lr", "images_per_s": "train/images_per_s",
           "val_acc": "val/acc", "val_balanced_acc": "val/balanced_acc", "val_top5": "val/top5"}
EVENTS = "events.out.tfevents.*"


class EpochCurves:
    """Context manager: `epoch(record)` after each epoch; closed however the trial ends."""

    def __init__(self, config: TrialConfig, done: list[dict[str, Any]], log: TextIO):
        self.log, self.writer = log, None
        if "tensorboard" not in config.logging:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            folder = Path(config.trial_dir)
            # a resumed trial: an earlier attempt's epochs, unless this folder has them already
            # (an asha trial promoted here, where it ran before)
            logged = logged_epochs(folder)
            self.writer = SummaryWriter(str(folder))
            for record in done:
                if record["epoch"] not in logged:
                    self._write(record)
            self.writer.flush()
        except Exception as exc:
            self._failed(exc)

    def epoch(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        try:
            self._write(record)
            self.writer.flush()  # TensorBoard shows the epoch now, not at the trial's end
        except Exception as exc:
            self._failed(exc)

    def _write(self, record: dict[str, Any]) -> None:
        for key, tag in SCALARS.items():
            self.writer.add_scalar(tag, record[key], record["epoch"])

    def _failed(self, exc: Exception) -> None:
        print(redact(f"TensorBoard logging stopped ({type(exc).__name__}: {exc}); training goes on"),
              file=self.log, flush=True)
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:
                pass  # already reported; the trial must not fail for it

    def __enter__(self) -> "EpochCurves":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception as exc:
                self._failed(exc)


def logged_epochs(folder: Path) -> set[int]:
    """The epochs whose scalars event files in `folder` already hold."""
    if not any(folder.glob(EVENTS)):
        return set()
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = set()
    for path in sorted(folder.glob(EVENTS)):
        for event in EventFileLoader(str(path)).Load():
            if any(v.tag == SCALARS["val_acc"] for v in event.summary.value):
                steps.add(event.step)
    return steps
