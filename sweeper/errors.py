"""The few exceptions sweeper raises on purpose; the CLI turns each into one message."""

from __future__ import annotations

import reprlib
from typing import Any

QUOTE_LIMIT = 80  # characters of a user's value that a message quotes
_QUOTING = reprlib.Repr()  # (keyword arguments need Python 3.12)
_QUOTING.maxlevel, _QUOTING.maxstring, _QUOTING.maxlong, _QUOTING.maxother = 2, QUOTE_LIMIT, 40, QUOTE_LIMIT
_QUOTING.maxtuple = _QUOTING.maxlist = _QUOTING.maxdict = _QUOTING.maxset = _QUOTING.maxfrozenset = 4


def quoted(value: Any) -> str:
    """A user's value as a message quotes it (its repr), at most about QUOTE_LIMIT characters: a
    huge or deeply nested value costs neither time nor memory to describe."""
    text = _QUOTING.repr(value)
    return text if len(text) <= QUOTE_LIMIT + 10 else f"{text[:QUOTE_LIMIT]}..."


class SweeperError(Exception):
    """A problem the user can fix; printed as `Error: ...` with no traceback."""

    exit_code = 1


class SpecError(SweeperError):
    """The search-space file (or a command-line option) is invalid.

    Holds every problem found, each as `(yaml.path, message)`, so one run shows them all.
    """

    exit_code = 2

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{path}: {msg}" if path else msg for path, msg in problems]
        head = f"{source}: " if source else ""
        if len(lines) == 1:
            super().__init__(head + lines[0])
        else:
            body = "\n".join(f"  {line}" for line in lines)
            super().__init__(f"{head}{len(lines)} problems\n{body}")


class DataError(SweeperError):
    """The dataset is missing, empty, inconsistent or unreadable."""

    exit_code = 2


class StorageError(SweeperError):
    """The study store cannot be opened, or the study does not exist."""

    exit_code = 2


class WorkerError(SweeperError):
    """A training worker failed in a way that is the trial's, not the sweep's, problem."""
