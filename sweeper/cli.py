"""The `sweeper` command line: thin commands over spec, orchestrator and store."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from sweeper.errors import SpecError, SweeperError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Hyperparameter sweeps for fine-tuning image classifiers.")
_state = {"debug": False}


def _err(text: str) -> None:
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
            _err(f"Error: {exc}")
            raise typer.Exit(exc.exit_code) from None

    return wrapper


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    import optuna

    _state["debug"] = debug
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # sweeper reports trials itself


def _parse_gpus(gpus: str | None) -> list[str] | None:
    if gpus is None:
        return None
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise SpecError("--gpus", [("", f"must be GPU ids separated by commas, e.g. 0,1; got {gpus!r}")])
    return ids


def _data_progress(label: str):
    """A progress callback for decoding the dataset: a bar on a terminal, nothing otherwise."""
    if not sys.stdout.isatty():
        return None, None
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task(label, total=None)
    return bar, lambda done, total: bar.update(task, completed=done, total=total)


@app.command()
@user_errors
def run(
    space: Annotated[Path, typer.Option(help="Search-space YAML file.")],
    study: Annotated[Optional[str], typer.Option(help="Study name (default: the file's `study`).")] = None,
    storage: Annotated[Optional[str], typer.Option(help="Study store URL.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Image folder, overriding data.root.")] = None,
    n_trials: Annotated[Optional[int], typer.Option(min=1, help="Finished trials to reach.")] = None,
    timeout: Annotated[Optional[float], typer.Option(min=1, help="Seconds after which no trial starts.")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Trials at a time (default: one per GPU, else 1).")] = None,
    gpus: Annotated[Optional[str], typer.Option(help="GPU ids to use, e.g. 0,1.")] = None,
    trials_dir: Annotated[Path, typer.Option(help="Where trial folders go.")] = Path("trials"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and show samples; write nothing.")] = False,
) -> None:
    """Create or resume a study and run trials until it holds n_trials finished ones."""
    from sweeper import data as datasets
    from sweeper import orchestrator, store
    from sweeper.progress import make_progress
    from sweeper.spec import load_spec

    overrides = {"study": study, "data_root": str(data) if data else None,
                 "n_trials": n_trials, "timeout": timeout}
    spec = load_spec(space, overrides)
    gpu_ids = _parse_gpus(gpus)
    if spec.data.root is not None:
        listing = datasets.list_folder(spec.data.root, spec.data.val_fraction)  # fail before writing
    if dry_run:
        from sweeper.dry_run import describe

        print(describe(spec))
        return
    storage_url = storage or store.DEFAULT_STORAGE
    bar, callback = _data_progress("decoding images")
    if bar:
        bar.start()
    try:
        cache = orchestrator.prepare_data(spec, trials_dir, callback)
    finally:
        if bar:
            bar.stop()
    optuna_storage = store.open_storage(storage_url)
    the_study = orchestrator.create_study(spec, optuna_storage)
    slots = orchestrator.make_slots(workers, gpu_ids)
    where = ", ".join(f"GPU {s.gpu}" if s.gpu is not None else "CPU" for s in slots)
    start = time.monotonic()
    with make_progress(spec.study, spec.search.n_trials, spec.search.objective) as progress:
        progress.message(f"study={spec.study} storage={store.redact(storage_url)} "
                         f"workers={len(slots)} ({where}) n_trials={spec.search.n_trials}")
        orchestrator.Orchestrator(spec, the_study, slots, cache, progress, trials_dir).run()
    print(summary(the_study, spec.search.objective, time.monotonic() - start))


def summary(study, objective: str, seconds: float) -> str:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    line = (f"study {study.study_name}: {len(trials)} trials "
            f"({count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} pruned, "
            f"{count[TrialState.FAIL]} failed) after {seconds:.0f} s")
    if count[TrialState.COMPLETE]:
        best = study.best_trial
        params = ", ".join(f"{k}={v}" for k, v in best.params.items())
        line += f"\nbest {objective} {best.value:.4f} (trial {best.number}): {params}"
    return line


if __name__ == "__main__":
    app()
