"""The few exceptions sweeper raises on purpose; the CLI turns each into one message."""

from __future__ import annotations


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
