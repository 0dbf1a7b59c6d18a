"""What every command group shares: the `Error: ...` contract, option types, progress bars,
opening a study by name and JSON output."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer

from sweeper.errors import SpecError, SweeperError, quoted
from sweeper.redaction import redact

_state = {"debug": False}

StudyOpt = Annotated[str, typer.Option("--study", help="Study name.")]
StorageOpt = Annotated[Optional[str], typer.Option(help="Study store URL (default sqlite:///studies.db).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
TrialsDirOpt = Annotated[Path, typer.Option(help="Where trial folders are.")]
WorkersOpt = Annotated[Optional[int], typer.Option(min=1, help="Trials at a time (default: one per GPU, else 1).")]
GpusOpt = Annotated[Optional[str], typer.Option(help="GPUs to use, numbered within CUDA_VISIBLE_DEVICES (0,1), or UUIDs / MIG ids; none: the CPU (default: every visible GPU, else the CPU).")]
ArtifactsOpt = Annotated[Optional[str], typer.Option(help="Artifact store the study's trials left their files in: a folder or s3://bucket/prefix (default: $SWEEPER_ARTIFACTS, else the one the study's sweeps used, else each trial's folder here).")]
KeepCheckpointsOpt = Annotated[int, typer.Option(min=0, help="Best completed trials that keep checkpoint.pth.")]


def set_debug(debug: bool) -> None:
    _state["debug"] = debug


def err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def user_errors(command: Callable) -> Callable:
    """SweeperError -> `Error: ...` on stderr and its exit code, with no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except SweeperError as exc:
            if _state["debug"]:
                raise
            err(f"Error: {redact(str(exc))}")
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def check_choice(option: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise SpecError(option, [("", f"unknown {quoted(value)}; valid: {', '.join(valid)}")])


@contextlib.contextmanager
def progress_bar(label: str, total: int | None = None) -> Iterator[Callable[[int, int], None] | None]:
    """A bar on a terminal, fed by callback(done, total); None (no output) otherwise."""
    if not sys.stdout.isatty():
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def open_study(study: str, storage: str | None):
    """An existing study by name; a bad name, a missing store or study is an `Error:`."""
    from sweeper import store
    from sweeper.cli.paths import check_storage
    from sweeper.spec.sweep_spec import validate_study_name

    if (problem := validate_study_name(study)) is not None:
        raise SpecError("--study", [("", problem)])
    check_storage(storage, write=False)
    return store.load_study(store.open_storage(storage or store.DEFAULT_STORAGE, create=False), study)


def trial_files(study, artifacts_url: str | None):
    """Where the study's trials' files are read from (artifacts.py)."""
    from sweeper import artifacts

    return artifacts.for_study(study, artifacts_url)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def scoring_device(gpus_text: str | None):
    """`--gpus` as `run` takes it (checked the same way); the first GPU chosen is used, with its
    share of memory beside the sweep workers training on it, else the CPU."""
    from sweeper import gpus
    from sweeper.cpu_share import CpuShare
    from sweeper.train.device import in_process

    chosen = gpus.choose(gpus_text, first_only=True)
    if not chosen:
        return in_process(None)
    with CpuShare(gpu=chosen[0].identity) as share:
        neighbours = share.on_gpu(chosen[0].identity) - 1
    return in_process(chosen[0].token, neighbours)


@contextlib.contextmanager
def scoring(label: str, total: int, device) -> Iterator[Callable[[int], None]]:
    """Around scoring `total` images: a progress bar fed by the callback it yields (images
    scored), and on CPU this process's share of the cores beside any sweep's workers."""
    from sweeper.cpu_share import CpuShare

    with progress_bar(label, total) as callback, \
            (CpuShare() if device.type == "cpu" else contextlib.nullcontext()) as share:
        if share:
            share.apply()
        scored = 0

        def advance(n: int) -> None:
            nonlocal scored
            scored += n
            if callback:
                callback(scored, total)

        yield advance


def member_probabilities(members, images, tta: str, label: str, device) -> list:
    """Each member's class probabilities on the images (ensemble.probabilities), with `scoring`'s
    progress bar and CPU share."""
    from sweeper.analyze import ensemble as ens

    with scoring(label, len(members) * len(images), device) as advance:
        return [ens.probabilities(m, images, tta, advance, device) for m in members]
