"""Commands that train: `run` a study, `recheck` its best configurations, `import` past runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from sweeper.cli.common import (
    ArtifactsOpt,
    GpusOpt,
    JsonOpt,
    KeepCheckpointsOpt,
    StorageOpt,
    StudyOpt,
    TrialsDirOpt,
    WorkersOpt,
    err,
    open_study,
    print_json,
    progress_bar,
    user_errors,
)
from sweeper.cli.paths import check_output_dir, check_storage
from sweeper.redaction import redact

app = typer.Typer()
LogOpt = Annotated[Optional[str], typer.Option("--log", help="Also log trials to: tensorboard, mlflow (comma-separated; none: neither), instead of the space file's `logging:`.")]


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
    workers: WorkersOpt = None,
    gpus: GpusOpt = None,
    trials_dir: Annotated[Path, typer.Option(help="Where trial folders go.")] = Path("trials"),
    artifacts: Annotated[Optional[str], typer.Option(help="Artifact store for what trials leave, so any machine can resume or read them: a folder (e.g. on NFS) or s3://bucket/prefix (default: $SWEEPER_ARTIFACTS, else the one the study uses, else trials/ only).")] = None,
    max_retry: Annotated[int, typer.Option(min=0, help="Times a lost or interrupted trial is queued again.")] = 1,
    trial_timeout: Annotated[Optional[float], typer.Option(min=1, help="Kill a trial that reports nothing (start-up included) for this many seconds.")] = None,
    keep_checkpoints: KeepCheckpointsOpt = 3,
    log: LogOpt = None,
    heartbeat: Annotated[float, typer.Option(min=0.2, hidden=True, help="Seconds between heartbeats.")] = 10.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and show samples; write nothing.")] = False,
) -> None:
    """Create or resume a study and run trials until it holds n_trials finished ones."""
    from optuna.trial import TrialState

    from sweeper import store
    from sweeper import artifacts as artifact_urls
    from sweeper.analyze import prior_studies
    from sweeper.data import datasets
    from sweeper.spec.sweep_spec import load_spec
    from sweeper.spec.tracking import choose as choose_trackers
    from sweeper.sweep import orchestrator
    from sweeper.sweep import setup as sweep_setup
    from sweeper.sweep import study_artifacts
    from sweeper.sweep.progress import make_progress

    overrides = {"study": study, "data_root": str(data) if data else None,
                 "n_trials": n_trials, "timeout": timeout, "budget_epochs": budget_epochs}
    spec = load_spec(space, overrides)
    logging = choose_trackers(log, spec.logging, str(space))
    check_storage(storage, write=True)
    check_output_dir("--trials-dir", trials_dir)
    slots = sweep_setup.make_slots(workers, gpus, spec)  # devices checked before anything is written
    sweep_setup.check_data(spec)
    known, notes = prior_studies.known_configurations(spec, storage or store.DEFAULT_STORAGE)  # read only
    # checked before any work (a dry run writes nothing, so its store is checked without a probe)
    artifacts = artifact_urls.url_for(artifacts) or study_artifacts.recorded_in(storage or store.DEFAULT_STORAGE,
                                                                               spec.study)
    store.check_not_shared_over_network(storage or store.DEFAULT_STORAGE, shared=artifacts is not None)
    artifact_store = study_artifacts.open_for_run(artifacts, probe=not dry_run)
    if dry_run:
        from sweeper.spec.dry_run import describe

        print(describe(spec, len(slots), known))
        return
    sweep_setup.prefetch_hub_weights(spec)
    storage_url = storage or store.DEFAULT_STORAGE
    with progress_bar("decoding images") as callback:
        cache = sweep_setup.prepare_data(spec, trials_dir, callback)
    optuna_storage = store.open_storage(storage_url)
    classes = datasets.load(cache).classes
    store.check_classes(optuna_storage, spec.study, classes)
    the_study = sweep_setup.create_study(spec, optuna_storage, storage_url, len(slots), known)
    store.remember_space(the_study, space, spec)
    store.remember_classes(the_study, classes)
    artifact_store = study_artifacts.join(the_study, artifact_store)
    if artifact_store is not None:
        study_artifacts.share_split(the_study, artifact_store, cache)
    where = ", ".join(s.label for s in slots)
    start = time.monotonic()
    with make_progress(spec.study, spec.search.n_trials, spec.search.objective) as progress:
        progress.message(f"study={spec.study} storage={redact(storage_url)} "
                         f"workers={len(slots)} ({where}) n_trials={spec.search.n_trials}")
        for note in notes:
            progress.message(note)
        if known:
            progress.message(f"search.prior: {len(known)} configuration(s) from {', '.join(spec.search.prior.studies)}")
        if (plan := getattr(the_study.pruner, "plan", None)) is not None:  # the study's (setup.shared_plan)
            progress.message(f"screen: {plan.describe()}")
        if (said := sweep_setup.check_cpu_bf16(sweep_setup.values(spec, "precision"), slots)) is not None:
            progress.message(said)
        options = orchestrator.Options(max_retry, trial_timeout, keep_checkpoints, heartbeat, logging)
        if artifact_store is not None:
            progress.message(f"artifacts: {artifact_store.url}")  # a folder or s3://bucket/prefix: no secret
        runner = orchestrator.Orchestrator(spec, the_study, slots, cache, progress, trials_dir,
                                           storage_url, options, artifact_store=artifact_store)
        runner.run()
    print(summary(the_study, spec.search.objective, time.monotonic() - start, spec.search.budget_epochs))
    if not runner.interrupts and spec.search.recheck is None:
        _score_on_test(the_study, trials_dir, artifact_store)
    if runner.interrupts:
        err("interrupted: the trials that were running are recorded FAIL (interrupted) and "
            "queued again (asha's paused trials stay paused); `sweeper run` again resumes the study")
        raise typer.Exit(130)
    kept = spec.search.recheck
    if kept is not None and runner.deadline is not None and time.monotonic() >= runner.deadline:
        err(f"search.recheck not run: the timeout has passed (no trial starts after it); "
            f"`sweeper recheck --study {spec.study} --top {kept.top} --seeds {kept.seeds}` runs it")
    elif kept is not None and any(t.state == TrialState.COMPLETE for t in the_study.get_trials(deepcopy=False)):
        # search.recheck: inside the budget, which kept these epochs back from the search
        if _recheck(the_study, kept.top, kept.seeds, slots, trials_dir, storage_url, options, artifact_store):
            err("interrupted: `sweeper run` (or `sweeper recheck`) again trains the re-check runs still missing")
            raise typer.Exit(130)


def summary(study, objective: str, seconds: float, budget_epochs: int | None = None) -> str:
    from optuna.trial import TrialState

    from sweeper.sweep import epochs, reserve

    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    line = (f"study {study.study_name}: {len(trials)} trials "
            f"({count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} pruned, "
            f"{count[TrialState.FAIL]} failed) after {seconds:.0f} s\n{epochs.summary(trials, budget_epochs)}")
    for number, why in reserve.finished_by_reserve(trials):
        line += f"\nthe budget's reserve finished trial {number}" if why == reserve.KEPT else f"\ntrial {number} {why}"
    if count[TrialState.WAITING]:  # enqueued configurations the budget or n_trials left unstarted
        line += (f"\n{count[TrialState.WAITING]} queued configuration(s) not started: the next `sweeper run` of "
                 f"this study starts with them (sampler: prior draws known configurations instead of queueing them)")
    if count[TrialState.COMPLETE]:
        best = study.best_trial
        params = ", ".join(f"{k}={v}" for k, v in best.params.items())
        line += f"\nbest {objective} {best.value:.4f} (trial {best.number}): {params}"
    return line


@app.command()
@user_errors
def recheck(
    study: StudyOpt,
    top: Annotated[int, typer.Option(min=1, help="Configurations to re-check, best first score first.")] = 3,
    seeds: Annotated[int, typer.Option(min=1, help="Extra runs per configuration, each with a new seed.")] = 2,
    storage: Annotated[Optional[str], typer.Option(help="Study store URL.")] = None,
    workers: WorkersOpt = None,
    gpus: GpusOpt = None,
    trials_dir: TrialsDirOpt = Path("trials"),
    trial_timeout: Annotated[Optional[float], typer.Option(min=1, help="Kill a run that reports nothing for this many seconds.")] = None,
    keep_checkpoints: KeepCheckpointsOpt = 3,
    artifacts: ArtifactsOpt = None,
    log: LogOpt = None,
    heartbeat: Annotated[float, typer.Option(min=0.2, hidden=True)] = 10.0,
) -> None:
    """Retrain the best configurations with new seeds (every epoch, no pruning); rank by the mean."""
    from sweeper import store
    from sweeper.spec.tracking import choose as choose_trackers
    from sweeper.sweep import orchestrator
    from sweeper.sweep import setup as sweep_setup
    from sweeper.sweep import study_artifacts

    logging = choose_trackers(log, (), "--log")
    check_storage(storage, write=True)
    check_output_dir("--trials-dir", trials_dir)
    slots = sweep_setup.make_slots(workers, gpus)
    artifact_store = study_artifacts.open_for_run(artifacts)
    the_study = open_study(study, storage)
    artifact_store = study_artifacts.join(the_study, artifact_store)
    store.check_not_shared_over_network(storage or store.DEFAULT_STORAGE, shared=artifact_store is not None)
    # max_retry applies to `run` trials of dead orchestrators this one may recover; re-checks
    # themselves are never queued again (the next recheck plans them)
    options = orchestrator.Options(1, trial_timeout, keep_checkpoints, heartbeat, logging)
    interrupted = _recheck(the_study, top, seeds, slots, trials_dir, storage or store.DEFAULT_STORAGE, options,
                           artifact_store)
    if interrupted:
        err("interrupted: `sweeper recheck` again trains the runs still missing")
        raise typer.Exit(130)


def _recheck(the_study, top: int, seeds: int, slots, trials_dir: Path, storage_url: str, options,
             artifact_store=None) -> bool:
    """Retrain the `top` configurations with `seeds` new seeds, print the ranking by the mean;
    True if interrupted."""
    from sweeper.analyze import recheck as rechecking
    from sweeper.analyze.ranking import configurations
    from sweeper.artifacts import TrialFiles
    from sweeper.sweep import orchestrator
    from sweeper.sweep import setup as sweep_setup
    from sweeper.sweep.progress import make_progress

    study = the_study.study_name
    with progress_bar("decoding images") as callback:
        files = TrialFiles(artifact_store.url if artifact_store else the_study.user_attrs.get("artifacts"))
        chosen, todo = rechecking.plan(the_study, top, seeds, trials_dir, files, callback)
    objective = the_study.user_attrs.get("objective", "value")
    runner = None
    if todo:
        start = time.monotonic()
        with make_progress(study, len(todo), objective) as progress:
            progress.message(f"re-checking {len(chosen)} configuration(s) (trials "
                             f"{', '.join(str(t.number) for t in chosen)}): {len(todo)} run(s) "
                             f"with new seeds on {len(slots)} worker(s)")
            if (said := sweep_setup.check_cpu_bf16([p.base.precision for p in todo], slots)) is not None:
                progress.message(said)
            source = rechecking.RecheckSource(the_study, todo, trials_dir, options.heartbeat, storage_url)
            runner = orchestrator.Orchestrator(None, the_study, slots, Path(), progress, trials_dir,
                                               storage_url, options, source, artifact_store)
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
    interrupted = runner is not None and bool(runner.interrupts)
    if not interrupted:
        _score_on_test(the_study, trials_dir, artifact_store)
    return interrupted


def _score_on_test(the_study, trials_dir: Path, artifact_store) -> None:
    """The chosen configuration on the held-out test split, once, when a sweep ends (test_score.py)."""
    from sweeper.analyze import test_score
    from sweeper.artifacts import TrialFiles

    files = TrialFiles(artifact_store.url if artifact_store else the_study.user_attrs.get("artifacts"))
    line = test_score.describe(test_score.score_chosen(the_study, files, trials_dir),
                               the_study.user_attrs.get("objective", "val_acc"))
    if line:
        print(line)


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
    from sweeper import store
    from sweeper.spec.sweep_spec import load_spec
    from sweeper.sweep import importer

    spec = load_spec(space, {"study": study})
    check_storage(storage, write=True)
    added, skipped = importer.import_file(spec, space, from_, storage or store.DEFAULT_STORAGE)
    if as_json:
        print_json({"study": study, "imported": added,
                    "skipped": [{"line": line, "reason": why} for line, why in skipped]})
        return
    print(f"study {study}: imported {added} completed trial(s) from {from_}")
    for line, why in skipped:
        print(f"skipped line {line}: {why}")
