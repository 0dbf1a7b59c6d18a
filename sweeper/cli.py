"""The `sweeper` command line: thin commands over spec, orchestrator and store."""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from pathlib import Path
from typing import Annotated, Callable, Iterator, Optional

import typer

from sweeper.errors import SpecError, SweeperError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Hyperparameter sweeps for fine-tuning image classifiers.")
_state = {"debug": False}

StudyOpt = Annotated[str, typer.Option("--study", help="Study name.")]
StorageOpt = Annotated[Optional[str], typer.Option(help="Study store URL (default sqlite:///studies.db).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
TrialsDirOpt = Annotated[Path, typer.Option(help="Where trial folders are.")]


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


@contextlib.contextmanager
def _progress_bar(label: str, total: int | None = None) -> Iterator[Callable[[int, int], None] | None]:
    """A bar on a terminal, fed by callback(done, total); None (no output) otherwise."""
    if not sys.stdout.isatty():
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@app.command()
@user_errors
def run(
    space: Annotated[Path, typer.Option(help="Search-space YAML file.")],
    study: Annotated[Optional[str], typer.Option(help="Study name (default: the file's `study`).")] = None,
    storage: Annotated[Optional[str], typer.Option(help="Study store URL.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Image folder, overriding data.root.")] = None,
    n_trials: Annotated[Optional[int], typer.Option(min=1, help="Finished trials to reach.")] = None,
    budget_epochs: Annotated[Optional[int], typer.Option(min=1, help="Stop once this many epochs are trained across all trials (search.budget.epochs).")] = None,
    timeout: Annotated[Optional[float], typer.Option(min=1, help="Seconds after which no trial starts.")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Trials at a time (default: one per GPU, else 1).")] = None,
    gpus: Annotated[Optional[str], typer.Option(help="GPU ids to use, e.g. 0,1.")] = None,
    trials_dir: Annotated[Path, typer.Option(help="Where trial folders go.")] = Path("trials"),
    max_retry: Annotated[int, typer.Option(min=0, help="Times a lost or interrupted trial is queued again.")] = 1,
    trial_timeout: Annotated[Optional[float], typer.Option(min=1, help="Kill a trial that reports nothing (start-up included) for this many seconds.")] = None,
    keep_checkpoints: Annotated[int, typer.Option(min=0, help="Best completed trials that keep checkpoint.pth.")] = 3,
    heartbeat: Annotated[float, typer.Option(min=0.2, hidden=True, help="Seconds between heartbeats.")] = 10.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and show samples; write nothing.")] = False,
) -> None:
    """Create or resume a study and run trials until it holds n_trials finished ones."""
    from sweeper import data as datasets
    from sweeper import orchestrator, store, sweep_setup
    from sweeper.progress import make_progress
    from sweeper.spec import load_spec

    overrides = {"study": study, "data_root": str(data) if data else None,
                 "n_trials": n_trials, "timeout": timeout, "budget_epochs": budget_epochs}
    spec = load_spec(space, overrides)
    gpu_ids = _parse_gpus(gpus)
    # fail before writing anything
    classes = (datasets.list_folder(spec.data.root, spec.data.val_fraction).classes
               if spec.data.root is not None else datasets.BUILTIN_CLASSES[spec.data.builtin])
    if spec.search.objective == "val_top5" and len(classes) <= 5:
        raise SpecError(spec.source, [("search.objective", f"val_top5 is always 1.0 with "
                                       f"{len(classes)} classes; use val_acc or val_balanced_acc")])
    if dry_run:
        from sweeper.dry_run import describe

        print(describe(spec))
        return
    sweep_setup.prefetch_hub_weights(spec)
    storage_url = storage or store.DEFAULT_STORAGE
    with _progress_bar("decoding images") as callback:
        cache = sweep_setup.prepare_data(spec, trials_dir, callback)
    optuna_storage = store.open_storage(storage_url)
    the_study = sweep_setup.create_study(spec, optuna_storage, storage_url)
    store.remember_space(the_study, space, spec)
    slots = sweep_setup.make_slots(workers, gpu_ids)
    where = ", ".join(f"GPU {s.gpu}" if s.gpu is not None else "CPU" for s in slots)
    start = time.monotonic()
    with make_progress(spec.study, spec.search.n_trials, spec.search.objective) as progress:
        progress.message(f"study={spec.study} storage={store.redact(storage_url)} "
                         f"workers={len(slots)} ({where}) n_trials={spec.search.n_trials}")
        options = orchestrator.Options(max_retry, trial_timeout, keep_checkpoints, heartbeat)
        runner = orchestrator.Orchestrator(spec, the_study, slots, cache, progress, trials_dir,
                                           storage_url, options)
        runner.run()
    print(summary(the_study, spec.search.objective, time.monotonic() - start, spec.search.budget_epochs))
    if runner.interrupts:
        _err("interrupted: the trials that were running are recorded FAIL (interrupted) and "
             "queued again; `sweeper run` again resumes the study")
        raise typer.Exit(130)


data_app = typer.Typer(no_args_is_help=True, help="Look at a dataset before sweeping on it.")
app.add_typer(data_app, name="data")


@data_app.command("inspect")
@user_errors
def data_inspect(
    path: Annotated[Optional[Path], typer.Argument(help="Image folder: train/<class>/ and val/<class>/, or <class>/.")] = None,
    builtin: Annotated[Optional[str], typer.Option(help="A built-in dataset instead: digits.")] = None,
    val_fraction: Annotated[float, typer.Option(help="Validation share when the folder has no val/ (as in the space's data.val_fraction).")] = 0.2,
    out: Annotated[Optional[Path], typer.Option(help="HTML page (default trials/inspect/<name>.html).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Images per class and split, imbalance, sizes, modes, duplicates and unreadable files."""
    from sweeper import data_inspect as di
    from sweeper.spec import BUILTIN_DATASETS

    if (path is None) == (builtin is None):
        raise SpecError("data inspect", [("", "give an image folder PATH or --builtin digits (one of them)")])
    if not 0 < val_fraction < 1:
        raise SpecError("--val-fraction", [("", f"must be between 0 and 1, got {val_fraction}")])
    if path is not None and not path.is_dir():
        raise SpecError(str(path), [("", "is not a folder; give the image folder (train/<class>/ and "
                                         "val/<class>/, or <class>/ folders)")])
    if builtin is not None:
        _check_choice("--builtin", builtin, BUILTIN_DATASETS)
        result = di.inspect_builtin(builtin, val_fraction)
    else:
        with _progress_bar("reading image headers") as callback:
            result = di.inspect_folder(path, val_fraction, callback)
    target = out or Path("trials") / "inspect" / f"{result.name}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(di.html_report(result), encoding="utf-8")
    if as_json:
        _print_json({**result.to_json(), "html": str(target)})
        return
    print(di.text_report(result))
    print(f"html: {target}")


cache_app = typer.Typer(no_args_is_help=True, help="The decoded-image caches under <trials-dir>/.cache.")
app.add_typer(cache_app, name="cache")


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


@cache_app.command("list")
@user_errors
def cache_list(trials_dir: TrialsDirOpt = Path("trials"), as_json: JsonOpt = False) -> None:
    """Every cache: its dataset, images, size on disk, and whether a sweep would still use it."""
    from sweeper import caches

    found = caches.entries(trials_dir / ".cache")
    if as_json:
        _print_json([e.to_json() for e in found])
        return
    if not found:
        print(f"no caches under {trials_dir / '.cache'}")
        return
    for e in found:
        images = "-" if e.images is None else str(e.images)
        why = f"  ({e.why})" if e.why else ""
        print(f"{e.state:10s}  {_mb(e.size):>10s}  {images:>7s} images  {e.path.name}  {e.dataset}{why}")
    total = sum(e.size for e in found)
    reclaim = sum(e.size for e in found if e.state != caches.CURRENT)
    print(f"{len(found)} cache(s), {_mb(total)}; `sweeper cache clean` frees {_mb(reclaim)}")


@cache_app.command("clean")
@user_errors
def cache_clean(
    trials_dir: TrialsDirOpt = Path("trials"),
    all_: Annotated[bool, typer.Option("--all", help="Remove current caches too (the next sweep decodes again).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove stale, broken, partial and old-format caches (with --all, every cache)."""
    from sweeper import caches

    removed = [e for e in caches.entries(trials_dir / ".cache") if all_ or e.state != caches.CURRENT]
    for e in removed:
        caches.remove(e)
    if as_json:
        _print_json({"removed": [e.to_json() for e in removed], "freed_bytes": sum(e.size for e in removed)})
        return
    for e in removed:
        print(f"removed {e.state} {e.path.name} ({_mb(e.size)})")
    print(f"freed {_mb(sum(e.size for e in removed))}")


@app.command()
@user_errors
def recheck(
    study: StudyOpt,
    top: Annotated[int, typer.Option(min=1, help="Configurations to re-check, best first score first.")] = 3,
    seeds: Annotated[int, typer.Option(min=1, help="Extra runs per configuration, each with a new seed.")] = 2,
    storage: Annotated[Optional[str], typer.Option(help="Study store URL.")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Trials at a time (default: one per GPU, else 1).")] = None,
    gpus: Annotated[Optional[str], typer.Option(help="GPU ids to use, e.g. 0,1.")] = None,
    trials_dir: TrialsDirOpt = Path("trials"),
    trial_timeout: Annotated[Optional[float], typer.Option(min=1, help="Kill a run that reports nothing for this many seconds.")] = None,
    keep_checkpoints: Annotated[int, typer.Option(min=0, help="Best completed trials that keep checkpoint.pth.")] = 3,
    heartbeat: Annotated[float, typer.Option(min=0.2, hidden=True)] = 10.0,
) -> None:
    """Retrain the best configurations with new seeds (every epoch, no pruning); rank by the mean."""
    from sweeper import orchestrator, store, sweep_setup
    from sweeper import recheck as rechecking
    from sweeper.progress import make_progress
    from sweeper.ranking import configurations

    gpu_ids = _parse_gpus(gpus)
    the_study = _open_study(study, storage)
    with _progress_bar("decoding images") as callback:
        chosen, todo = rechecking.plan(the_study, top, seeds, trials_dir, callback)
    objective = the_study.user_attrs.get("objective", "value")
    runner = None
    if todo:
        slots = sweep_setup.make_slots(workers, gpu_ids)
        start = time.monotonic()
        with make_progress(study, len(todo), objective) as progress:
            progress.message(f"re-checking {len(chosen)} configuration(s) (trials "
                             f"{', '.join(str(t.number) for t in chosen)}): {len(todo)} run(s) "
                             f"with new seeds on {len(slots)} worker(s)")
            # max_retry applies to `run` trials of dead orchestrators this one may recover;
            # re-checks themselves are never queued again (the next recheck plans them)
            options = orchestrator.Options(1, trial_timeout, keep_checkpoints, heartbeat)
            source = rechecking.RecheckSource(the_study, todo, trials_dir, heartbeat)
            runner = orchestrator.Orchestrator(None, the_study, slots, Path(), progress, trials_dir,
                                               storage or store.DEFAULT_STORAGE, options, source)
            runner.run()
        done = f"{len(todo)} run(s) in {time.monotonic() - start:.0f} s"
    else:
        done = f"nothing to do: each has {seeds} re-check run(s)"
    numbers = {t.number for t in chosen}
    ranked = configurations(the_study.get_trials(deepcopy=False))
    print(f"study {study}: re-checked {len(chosen)} configuration(s), {done}")
    for rank, c in enumerate(ranked, start=1):
        if c.first.number in numbers:
            print(f"  #{rank} trial {c.first.number}: {c.describe(objective)}")
    if ranked:
        print(f"best configuration: trial {ranked[0].first.number} ({ranked[0].describe(objective)})")
    if runner is not None and runner.interrupts:
        _err("interrupted: `sweeper recheck` again trains the runs still missing")
        raise typer.Exit(130)


def summary(study, objective: str, seconds: float, budget_epochs: int | None = None) -> str:
    from optuna.trial import TrialState

    from sweeper import epochs

    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    line = (f"study {study.study_name}: {len(trials)} trials "
            f"({count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} pruned, "
            f"{count[TrialState.FAIL]} failed) after {seconds:.0f} s\n{epochs.summary(trials, budget_epochs)}")
    if count[TrialState.COMPLETE]:
        best = study.best_trial
        params = ", ".join(f"{k}={v}" for k, v in best.params.items())
        line += f"\nbest {objective} {best.value:.4f} (trial {best.number}): {params}"
    return line




def _check_choice(option: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise SpecError(option, [("", f"unknown {value!r}; valid: {', '.join(valid)}")])


def _open_study(study: str, storage: str | None):
    from sweeper import store
    from sweeper.spec import validate_study_name

    if (problem := validate_study_name(study)) is not None:
        raise SpecError("--study", [("", problem)])
    return store.load_study(store.open_storage(storage or store.DEFAULT_STORAGE, create=False), study)


def _print_json(value) -> None:
    import json

    print(json.dumps(value, indent=2, default=str))


@app.command()
@user_errors
def report(
    study: StudyOpt,
    storage: StorageOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="HTML file (default trials/<study>/report.html).")] = None,
) -> None:
    """Write a self-contained HTML report (importances, curves, ...) and trials.csv."""
    from sweeper.report import write_report

    the_study = _open_study(study, storage)
    html_path, csv_path, data = write_report(the_study, out or Path("trials") / study / "report.html")
    c = data.counts
    print(f"{html_path}\n{csv_path}\n{c['COMPLETE']} complete, {c['PRUNED']} pruned, "
          f"{c['FAIL']} failed")


def _ranked(the_study, by: str = "mean"):
    from sweeper.errors import StorageError
    from sweeper.ranking import RANKINGS, configurations

    _check_choice("--by", by, RANKINGS)
    ranked = configurations(the_study.get_trials(deepcopy=False), by)
    if not ranked:
        raise StorageError(f"study {the_study.study_name!r} has no completed trial yet; "
                           "run `sweeper run` first")
    return ranked


@app.command()
@user_errors
def best(
    study: StudyOpt,
    storage: StorageOpt = None,
    export: Annotated[Optional[str], typer.Option(help="Write the best trial's config here (a file, or a folder ending in /).")] = None,
    format: Annotated[Optional[str], typer.Option("--format", help="mmcls | mmpretrain | yaml (default: by suffix).")] = None,
    by: Annotated[str, typer.Option("--by", help="mean: configurations by their mean over re-check seeds; first: by their first score.")] = "mean",
    as_json: JsonOpt = False,
) -> None:
    """Show the best configuration; with --export, write it as an mmcls/mmpretrain config or YAML space."""
    from sweeper import export as exporter
    from sweeper.errors import StorageError
    from sweeper.recovery import IMPORTED
    from sweeper.report_data import value_source
    from sweeper.trial_config import TrialConfig

    the_study = _open_study(study, storage)
    if format is not None:
        _check_choice("--format", format, exporter.FORMATS)
    config_rank = _ranked(the_study, by)[0]
    trial = config_rank.first
    rule = the_study.user_attrs.get("value", "last")
    objective = the_study.user_attrs.get("objective", "value")
    imported = trial.user_attrs.get(IMPORTED)
    info = {"trial": trial.number, "value": trial.value, "value_rule": rule,
            "value_epoch": trial.user_attrs.get("value_epoch"), "params": trial.params,
            "epochs": trial.user_attrs.get("epochs_run"), "trial_dir": trial.user_attrs.get("trial_dir"),
            "ranked_by": by, "mean": config_rank.mean, "std": config_rank.std,
            "runs": config_rank.count, "lucky": config_rank.lucky,
            "run_trials": [t.number for t in config_rank.runs], "imported": imported}
    written = None
    if export is not None:
        config_path = Path(info["trial_dir"] or "") / "config.json"
        if imported:
            raise StorageError(f"trial {trial.number} was imported from {imported}, so sweeper has "
                               f"no trained config to export; `sweeper recheck --study {study}` "
                               "trains it (then export again)")
        if not config_path.is_file():
            raise StorageError(f"the best trial's config {config_path} is missing; was trials/ moved?")
        config = TrialConfig.from_json(config_path.read_text())
        is_dir = Path(export).is_dir() or export.endswith(("/", "\\"))
        fmt = format or (exporter.guess_format(Path(export)) if not is_dir else "mmcls")
        target = Path(export) / exporter.default_filename(config, fmt) if is_dir else Path(export)
        classes = trial.user_attrs.get("classes") or []
        paths = exporter.write(config, classes, fmt, target, trial.value,
                               trial.user_attrs.get("train_images"))
        written = str(paths[0])
        info["exported"] = {"path": written, "format": fmt, "files": [str(p) for p in paths[1:]]}
    if as_json:
        _print_json(info)
        return
    params = ", ".join(f"{k}={v}" for k, v in trial.params.items())
    where = (f"imported from {imported} (line {trial.user_attrs.get('import_line')})" if imported
             else f"folder: {info['trial_dir']}")
    if config_rank.count > 1:
        head = f"best configuration: trial {trial.number}, {config_rank.describe(objective)}"
        if by == "first":
            head += " (ranked by first score)"
    else:
        head = f"best trial {trial.number}: {objective} {trial.value:.4f} of {value_source(trial, rule)}"
    print(f"{head}\nparams: {params}\n{where}")
    if written:
        print(f"exported {info['exported']['format']} config: {written}")
        for path in info["exported"]["files"]:
            print(f"  with {path}")


def _member_probs(members, images, tta: str, label: str):
    import contextlib

    from sweeper import ensemble as ens
    from sweeper.cpu_share import CpuShare
    from sweeper.worker import pick_device

    total = len(members) * len(images)
    # on CPU this process takes its share of the cores beside any sweep's workers
    with _progress_bar(label, total) as callback, \
            (CpuShare() if pick_device().type == "cpu" else contextlib.nullcontext()) as share:
        if share:
            share.apply()
        scored = 0

        def advance(n: int) -> None:
            nonlocal scored
            scored += n
            if callback:
                callback(scored, total)

        return [ens.probabilities(m, images, tta, advance) for m in members]


def ensemble_path(trials_dir: Path, study: str) -> Path:
    return trials_dir / study / "ensemble.json"


@app.command()
@user_errors
def ensemble(
    study: StudyOpt,
    top: Annotated[int, typer.Option(min=1, help="Members: the K best trials by their value.")] = 3,
    method: Annotated[str, typer.Option(help="mean (average the class probabilities) | vote (majority of labels).")] = "mean",
    storage: StorageOpt = None,
    trials_dir: TrialsDirOpt = Path("trials"),
    as_json: JsonOpt = False,
) -> None:
    """Score the ensemble of the K best trials on the validation set, beside each member; saves it for `predict`."""
    import json

    from sweeper import ensemble as ens

    _check_choice("--method", method, ens.METHODS)
    the_study = _open_study(study, storage)
    members = ens.top_members(the_study.get_trials(deepcopy=False), top, study)
    classes = ens.check_classes(members)
    images, labels = ens.validation_set(members[0])
    probs = _member_probs(members, images, "none", "scoring members")
    rows = []
    for m, p in zip(members, probs):
        rows.append({"trial": m.trial.number, "value": m.trial.value,
                     **ens.scores(p.argmax(dim=1), labels, len(classes))})
    predicted, _ = ens.combine(probs, method)
    result = {"study": study, "method": method, "val_images": len(labels),
              "ensemble": ens.scores(predicted, labels, len(classes)), "members": rows,
              "best_single": max(rows, key=lambda r: r["accuracy"])}
    path = ensemble_path(trials_dir, study)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result, "checkpoints": [str(m.checkpoint) for m in members]}, indent=2))
    if as_json:
        _print_json({**result, "saved": str(path)})
        return
    print(f"{'':>22} {'accuracy':>9} {'balanced':>9}")
    for r in rows:
        print(f"{'trial ' + str(r['trial']):>22} {r['accuracy']:9.4f} {r['balanced_accuracy']:9.4f}")
    b, e = result["best_single"], result["ensemble"]
    print(f"{'best single (trial ' + str(b['trial']) + ')':>22} {b['accuracy']:9.4f} {b['balanced_accuracy']:9.4f}")
    print(f"{'ensemble (' + method + ')':>22} {e['accuracy']:9.4f} {e['balanced_accuracy']:9.4f}"
          f"   ({e['accuracy'] - b['accuracy']:+.4f} over the best single model, {len(labels)} val images)")
    print(f"saved {path}; `sweeper predict --study {study} --top {top}` uses it")


@app.command()
@user_errors
def predict(
    study: StudyOpt,
    images: Annotated[Path, typer.Option(help="Folder of images to label (searched recursively).")],
    out: Annotated[Path, typer.Option(help="CSV to write: file, class, probability, top-5.")] = Path("submission.csv"),
    top: Annotated[Optional[int], typer.Option(min=1, help="Predict with the ensemble of the K best trials (default: the best configuration).")] = None,
    tta: Annotated[str, typer.Option(help="none | flip (average with the mirrored image).")] = "none",
    storage: StorageOpt = None,
    trials_dir: TrialsDirOpt = Path("trials"),
    as_json: JsonOpt = False,
) -> None:
    """Label every image of a folder with the best trial or a top-K ensemble; writes a CSV."""
    import csv
    import json

    from sweeper import ensemble as ens
    from sweeper.data import IMAGE_EXTENSIONS
    from sweeper.errors import DataError

    _check_choice("--tta", tta, ens.TTA)
    if not images.is_dir():
        raise DataError(f"--images {images} is not a folder; pass the folder of images to label")
    the_study = _open_study(study, storage)
    trials = the_study.get_trials(deepcopy=False)
    if top is None or top == 1:
        members, method = [ens.best_member(trials, study)], "mean"
    else:
        members = ens.top_members(trials, top, study)
        saved = ensemble_path(trials_dir, study)
        described = json.loads(saved.read_text()) if saved.is_file() else {}
        same = [r["trial"] for r in described.get("members", [])] == [m.trial.number for m in members]
        method = described["method"] if same else "mean"
    classes = ens.check_classes(members)
    paths = ens.list_images(images)
    if not paths:
        raise DataError(f"no images under {images} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    sides = {ens.decode_side(m) for m in members}
    decoded = {side: ens.decode_all(paths, side) for side in sides}
    first = decoded[ens.decode_side(members[0])]
    ok, bad = first[1], first[2]
    probs = []
    for m in members:
        probs += _member_probs([m], decoded[ens.decode_side(m)][0], tta, f"predicting (trial {m.trial.number})")
    predicted, mean = ens.combine(probs, method)
    k = min(5, len(classes))
    top_p, top_i = mean.topk(k, dim=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "class", "probability", "top5", "top5_probabilities"])
        for i, (path, label) in enumerate(zip(ok, predicted.tolist())):
            writer.writerow([path.relative_to(images).as_posix(), classes[label], f"{mean[i, label]:.6f}",
                             ";".join(classes[j] for j in top_i[i].tolist()),
                             ";".join(f"{v:.6f}" for v in top_p[i].tolist())])
    info = {"study": study, "members": [m.trial.number for m in members], "method": method, "tta": tta,
            "written": str(out), "rows": len(ok),
            "unreadable": [{"file": p.relative_to(images).as_posix(), "reason": why} for p, why in bad]}
    if as_json:
        _print_json(info)
        return
    who = f"trial {members[0].trial.number}" if len(members) == 1 else \
        f"the {method} ensemble of trials {', '.join(str(n) for n in info['members'])}"
    print(f"{out}: {len(ok)} image(s) labelled by {who}" + (f", tta {tta}" if tta != "none" else ""))
    for item in info["unreadable"]:
        print(f"unreadable, skipped: {item['file']} ({item['reason']})")


@app.command("import")
@user_errors
def import_results(
    study: StudyOpt,
    space: Annotated[Path, typer.Option(help="The search-space YAML the runs belong to.")],
    from_: Annotated[Path, typer.Option("--from", help="CSV: a column per searched parameter, the objective, optionally `note`.")],
    storage: StorageOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add finished runs from a CSV to a study as completed trials, so the sampler learns from them."""
    import optuna

    from sweeper import importer, store
    from sweeper.recovery import IMPORTED
    from sweeper.spec import load_spec

    spec = load_spec(space, {"study": study})
    rows, skipped = importer.read_results(from_, spec.space, spec.search.objective)
    url = storage or store.DEFAULT_STORAGE
    the_storage = store.open_storage(url)
    existing = {s.study_name for s in the_storage.get_all_studies()}
    if study in existing:
        the_study = store.load_study(the_storage, study)
        theirs = the_study.user_attrs.get("objective", spec.search.objective)
        if theirs != spec.search.objective:
            raise SpecError(str(space), [("search.objective", f"study {study!r} maximises {theirs}, "
                                          f"this file {spec.search.objective}; they cannot be mixed")])
    else:
        the_study = store.retrying(lambda: optuna.create_study(
            storage=the_storage, study_name=study, direction="maximize", sampler=spec.sampler(),
            pruner=spec.pruner()))
        store.retrying(lambda: the_study.set_user_attr("objective", spec.search.objective))
        store.retrying(lambda: the_study.set_user_attr("value", spec.search.value))
    source = from_.name
    seen = {(_params_key(t.params), t.value) for t in the_study.get_trials(deepcopy=False)
            if t.user_attrs.get(IMPORTED) == source}
    fresh = []
    for row, trial in zip(rows, importer.as_trials(rows, spec.space, source)):
        if (_params_key(trial.params), trial.value) in seen:
            skipped.append((row.line, "already imported"))
        else:
            fresh.append(trial)
    store.retrying(lambda: the_study.add_trials(fresh))
    store.remember_space(the_study, space, spec)
    if as_json:
        _print_json({"study": study, "imported": len(fresh),
                     "skipped": [{"line": line, "reason": why} for line, why in sorted(skipped)]})
        return
    print(f"study {study}: imported {len(fresh)} completed trial(s) from {from_}")
    for line, why in sorted(skipped):
        print(f"skipped line {line}: {why}")


def _params_key(params: dict) -> str:
    """Params as comparable text (a row imported twice has the same key)."""
    import json

    return json.dumps(params, sort_keys=True)


@app.command()
@user_errors
def studies(storage: StorageOpt = None, as_json: JsonOpt = False) -> None:
    """List the studies in a store with their trial counts and best value."""
    from optuna.trial import TrialState

    from sweeper import epochs, store

    rows = []
    the_storage = store.open_storage(storage or store.DEFAULT_STORAGE, create=False)
    for s in the_storage.get_all_studies():
        trials = the_storage.get_all_trials(s._study_id, deepcopy=False)
        count = {st.name.lower(): sum(t.state == st for t in trials)
                 for st in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
        values = [t.value for t in trials if t.state == TrialState.COMPLETE]
        rows.append({"study": s.study_name, "trials": len(trials), **count,
                     "best": max(values) if values else None, "epochs_trained": epochs.trained(trials),
                     "epochs_saved": epochs.saved(trials), "epochs_retrained": epochs.retrained(trials)})
    if as_json:
        _print_json(rows)
        return
    if not rows:
        print("no studies yet")
    for r in rows:
        best_text = f"{r['best']:.4f}" if r["best"] is not None else "-"
        print(f"{r['study']}: {r['trials']} trials ({r['complete']} complete, {r['pruned']} pruned, "
              f"{r['fail']} failed, {r['running']} running), best {best_text}; epochs "
              f"{r['epochs_trained']} trained, {r['epochs_saved']} saved, {r['epochs_retrained']} retrained")


@app.command()
@user_errors
def trials(study: StudyOpt, storage: StorageOpt = None, as_json: JsonOpt = False) -> None:
    """A table of a study's trials; after `recheck`, also its configurations ranked by their mean."""
    from sweeper.ranking import configurations, has_rechecks
    from sweeper.report_data import configuration_rows, trial_rows

    all_trials = _open_study(study, storage).get_trials(deepcopy=False)
    frame = trial_rows(all_trials).drop(columns=["start", "end"])
    configs = configuration_rows(configurations(all_trials)) if has_rechecks(all_trials) else None
    if as_json:
        records = lambda f: f.astype(object).where(f.notna(), None).to_dict(orient="records")  # noqa: E731
        out = records(frame)
        if configs is not None:
            by_config = {r["config"]: r for r in records(configs)}
            for row, t in zip(out, all_trials):
                key = t.user_attrs.get("recheck_of", t.number)
                if key in by_config:
                    c = by_config[key]
                    row.update(config=key, config_mean=c["mean"], config_std=c["std"], config_runs=c["runs"])
        _print_json(out)
        return
    frame.columns = [c.removeprefix("params_") for c in frame.columns]
    for column in frame.columns:
        if frame[column].dtype.kind not in "biufcmM":  # text columns: None shows as "-"
            frame[column] = frame[column].fillna("-")
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"))
    if configs is not None:
        print("\nconfigurations ranked by their mean over seeds (lucky: the first score was more "
              "than one standard deviation above the mean)")
        print(configs.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"))


@app.command()
@user_errors
def show(
    study: StudyOpt,
    trial: Annotated[int, typer.Option("--trial", help="Trial number.")],
    storage: StorageOpt = None,
    lines: Annotated[int, typer.Option(help="Log lines to show.")] = 15,
    as_json: JsonOpt = False,
) -> None:
    """One trial: its state, the resolved config and the tail of its log."""
    import json

    from sweeper.errors import StorageError
    from sweeper.report_data import trial_config_text

    the_study = _open_study(study, storage)
    found = [t for t in the_study.get_trials(deepcopy=False) if t.number == trial]
    if not found:
        raise StorageError(f"study {study!r} has no trial {trial} "
                           f"(trials 0-{len(the_study.trials) - 1})")
    t = found[0]
    config = trial_config_text(t)
    log_path = Path(t.user_attrs.get("trial_dir", "")) / "log.txt"
    log_tail = log_path.read_text().splitlines()[-lines:] if log_path.is_file() else []
    info = {"trial": t.number, "state": t.state.name, "value": t.value, "params": t.params,
            "intermediate_values": t.intermediate_values, "user_attrs": t.user_attrs,
            "config": json.loads(config) if config else None, "log_tail": log_tail}
    if as_json:
        _print_json(info)
        return
    reason = t.user_attrs.get("reason")
    print(f"trial {t.number}: {t.state.name}" + (f" {t.value:.4f}" if t.value is not None else "")
          + (f" ({reason})" if reason else ""))
    print(f"config ({t.user_attrs.get('trial_dir')}/config.json):")
    print(config or "  (missing)")
    print(f"log ({log_path}, last {len(log_tail)} lines):")
    print("\n".join(log_tail) or "  (missing)")


if __name__ == "__main__":
    app()
