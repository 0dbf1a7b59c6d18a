"""What a running sweep shows: a live table on a terminal, one parseable line per event otherwise."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from sweeper.redaction import redact


@dataclass
class _Running:
    number: int
    slot: int
    params: dict[str, Any]
    epochs: int
    epoch: int = 0
    value: float | None = None
    started: float = field(default_factory=time.monotonic)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class SweepProgress:
    """Receives the orchestrator's events; subclasses decide how to show them."""

    def __init__(self, study: str, n_trials: int, objective: str):
        self.study, self.n_trials, self.objective = study, n_trials, objective
        self.running: dict[int, _Running] = {}
        self.counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
        self.best: tuple[int, float] | None = None

    def __enter__(self) -> "SweepProgress":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def started(self, number: int, slot: int, params: dict[str, Any], epochs: int) -> None:
        self.running[number] = _Running(number, slot, params, epochs)

    def epoch(self, number: int, epoch: int, value: float) -> None:
        r = self.running[number]
        r.epoch, r.value = epoch, value

    def finished(self, number: int, state: str, value: float | None, reason: str | None) -> None:
        self.running.pop(number, None)
        self.counts[state] = self.counts.get(state, 0) + 1
        if state == "COMPLETE" and value is not None and (self.best is None or value > self.best[1]):
            self.best = (number, value)

    def message(self, text: str) -> None:
        """A line for the sweep's output, credentials hidden (it may quote an error)."""
        self._message(redact(text))

    def _message(self, text: str) -> None:
        pass

    def note_once(self, text: str) -> None:
        """A message that several trials may have (e.g. a worker's loader note), shown once."""
        if text not in self.__dict__.setdefault("_noted", set()):
            self._noted.add(text)
            self.message(text)


class LineProgress(SweepProgress):
    """Quiet, parseable: `key=value` words, one line per trial event (no per-epoch noise)."""

    def __init__(self, *args, stream: TextIO | None = None):
        super().__init__(*args)
        self.stream = stream or sys.stdout

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def started(self, number, slot, params, epochs):
        super().started(number, slot, params, epochs)
        words = " ".join(f"{k}={v}".replace(" ", "") for k, v in params.items())
        self._print(f"trial={number} event=start slot={slot} {words}".rstrip())

    def finished(self, number, state, value, reason):
        epoch = self.running[number].epoch if number in self.running else 0
        super().finished(number, state, value, reason)
        line = f"trial={number} event=finish state={state} epochs={epoch} {self.objective}={_fmt(value)}"
        if reason:
            line += f' reason="{redact(reason)}"'
        self._print(line)

    def _message(self, text):
        self._print(text)


class LiveProgress(SweepProgress):
    """A live table of running trials with counts and the best so far."""

    def __init__(self, *args, console: Console | None = None):
        super().__init__(*args)
        self.console = console or Console()
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.update(self._render())
        self.live.__exit__(*exc)

    def _render(self):
        c = self.counts
        best = f"trial {self.best[0]}: {self.best[1]:.4f}" if self.best else "-"
        done = sum(c.values())
        head = (f"[bold]{self.study}[/]  {done}/{self.n_trials} finished  "
                f"[green]{c['COMPLETE']} complete[/]  [yellow]{c['PRUNED']} pruned[/]  "
                f"[red]{c['FAIL']} failed[/]  best {self.objective}: {best}")
        table = Table(expand=False)
        for col in ("trial", "slot", "epoch", self.objective, "time", "params"):
            table.add_column(col)
        for r in sorted(self.running.values(), key=lambda r: r.number):
            params = ", ".join(f"{k}={v}" for k, v in r.params.items())
            table.add_row(str(r.number), str(r.slot), f"{r.epoch}/{r.epochs}", _fmt(r.value),
                          f"{time.monotonic() - r.started:.0f}s", params[:80])
        return Group(head, table)

    def _refresh(self):
        self.live.update(self._render())

    def started(self, *args):
        super().started(*args)
        self._refresh()

    def epoch(self, *args):
        super().epoch(*args)
        self._refresh()

    def finished(self, number, state, value, reason):
        super().finished(number, state, value, reason)
        colour = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}.get(state, "white")
        extra = f" ({reason})" if reason else ""
        self.console.print(f"trial {number}: [{colour}]{state.lower()}[/] {_fmt(value)}{extra}")
        self._refresh()

    def _message(self, text):
        self.console.print(text)


def make_progress(study: str, n_trials: int, objective: str) -> SweepProgress:
    if sys.stdout.isatty():
        return LiveProgress(study, n_trials, objective)
    return LineProgress(study, n_trials, objective)
