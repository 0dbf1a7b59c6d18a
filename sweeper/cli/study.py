"""Commands that read a study: `studies`, `trials`, `show`, `best` (and its export), `report`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from sweeper.cli.common import (
    ArtifactsOpt,
    GpusOpt,
    JsonOpt,
    StorageOpt,
    StudyOpt,
    TrialsDirOpt,
    check_choice,
    member_probabilities,
    open_study,
    print_json,
    scoring_device,
    trial_files,
    user_errors,
)
from sweeper.cli.paths import (
    check_export,
    check_output_dir,
    check_output_file,
    check_storage,
)
from sweeper.redaction import redact

app = typer.Typer()


@app.command()
@user_errors
def report(
    study: StudyOpt,
    storage: StorageOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="HTML file (default <trials-dir>/<study>/report.html).")] = None,
    errors: Annotated[bool, typer.Option("--errors/--no-errors", help="Score the best configuration's checkpoint on the validation set for what it gets wrong (one validation pass, on the CPU).")] = True,
    trials_dir: TrialsDirOpt = Path("trials"),
    artifacts: ArtifactsOpt = None,
) -> None:
    """Write a self-contained HTML report (importances, curves, what the best model gets wrong, ...) and trials.csv."""
    from sweeper.analyze import errors as error_analysis
    from sweeper.analyze.report import write_report

    if out is not None:
        check_output_file("--out", out, out.parent / "trials.csv")
    else:  # the default, <trials-dir>/<study>/report.html; open_study checks the name first
        check_output_dir("--out", trials_dir)
    the_study = open_study(study, storage)
    found = "left out (--no-errors)"
    if errors:
        from sweeper.train.device import in_process

        cpu = in_process(None)  # beside a sweep's GPU workers: the report never takes a GPU
        found = error_analysis.of_best(
            the_study.get_trials(deepcopy=False), study, trial_files(the_study, artifacts), trials_dir,
            lambda member, images: member_probabilities([member], images, "none", "scoring the best checkpoint", cpu)[0])
    html_path, csv_path, data = write_report(the_study, out or trials_dir / study / "report.html", found)
    c = data.counts
    print(f"{html_path}\n{csv_path}\n{c['COMPLETE']} complete, {c['PRUNED']} pruned, "
          f"{c['FAIL']} failed")


def _test_score_of(the_study, number: int):
    """The stored test score, when it was scored for this configuration (test_score.py)."""
    from sweeper.analyze import test_score

    result = test_score.stored(the_study)
    return result if result is not None and result["trial"] == number else None


def _ranked(the_study, by: str = "mean"):
    from sweeper.analyze.ranking import RANKINGS, configurations
    from sweeper.errors import StorageError

    check_choice("--by", by, RANKINGS)
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
    artifacts: ArtifactsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the best configuration; with --export, write it as an mmcls/mmpretrain config or YAML space."""
    from sweeper import store
    from sweeper.analyze import export as exporter
    from sweeper.analyze import test_score
    from sweeper.analyze.report_data import value_source
    from sweeper.sweep.recovery import IMPORTED

    if export is not None:
        check_export("--export", export)
    the_study = open_study(study, storage)
    if format is not None:
        check_choice("--format", format, exporter.FORMATS)
    config_rank = _ranked(the_study, by)[0]
    trial = config_rank.first
    rule = the_study.user_attrs.get("value", "last")
    objective = the_study.user_attrs.get("objective", "value")
    imported = trial.user_attrs.get(IMPORTED)
    files = trial_files(the_study, artifacts)
    info = {"trial": trial.number, "value": trial.value, "value_rule": rule,
            "value_epoch": trial.user_attrs.get("value_epoch"), "params": trial.params,
            "epochs": trial.user_attrs.get("epochs_run"), "trial_dir": trial.user_attrs.get("trial_dir"),
            "ranked_by": by, "mean": config_rank.mean, "std": config_rank.std,
            "runs": config_rank.count, "lucky": config_rank.lucky,
            "run_trials": [t.number for t in config_rank.runs], "imported": imported,
            "test_score": _test_score_of(the_study, trial.number)}
    if export is not None:
        # the export reads the classes from the trial; the study keeps them (store.remember_classes)
        with_classes = copy.copy(trial)
        with_classes.user_attrs = {**trial.user_attrs, store.CLASSES: store.classes_of(trial, the_study.user_attrs)}
        fmt, paths = exporter.export_trial(with_classes, study, export, format, files)
        info["exported"] = {"path": str(paths[0]), "format": fmt, "files": [str(p) for p in paths[1:]]}
    if as_json:
        print_json(info)
        return
    params = ", ".join(f"{k}={v}" for k, v in trial.params.items())
    where = (f"imported from {imported} (line {trial.user_attrs.get('import_line')})" if imported
             else files.where(trial))
    if config_rank.count > 1:
        head = f"best configuration: trial {trial.number}, {config_rank.describe(objective)}"
        if by == "first":
            head += " (ranked by first score)"
    else:
        head = f"best trial {trial.number}: {objective} {trial.value:.4f} of {value_source(trial, rule)}"
    print(f"{head}\nparams: {params}\n{where}")
    if (line := test_score.describe(info["test_score"], objective)) is not None:
        print(line)
    if "exported" in info:
        print(f"exported {info['exported']['format']} config: {info['exported']['path']}")
        for path in info["exported"]["files"]:
            print(f"  with {path}")


@app.command()
@user_errors
def studies(storage: StorageOpt = None, as_json: JsonOpt = False) -> None:
    """List the studies in a store with their trial counts and best value."""
    from sweeper import store
    from sweeper.analyze.report_data import study_rows

    check_storage(storage, write=False)
    rows = study_rows(store.open_storage(storage or store.DEFAULT_STORAGE, create=False))
    if as_json:
        print_json(rows)
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
    from sweeper.analyze.ranking import configurations, has_rechecks
    from sweeper.analyze.report_data import (
        configuration_rows,
        trial_records,
        trial_rows,
    )

    from sweeper.analyze import test_score

    the_study = open_study(study, storage)
    all_trials = the_study.get_trials(deepcopy=False)
    frame = trial_rows(all_trials).drop(columns=["start", "end"])
    configs = configuration_rows(configurations(all_trials)) if has_rechecks(all_trials) else None
    tested = test_score.stored(the_study)
    if tested is not None and tested.get("test") is not None:  # the chosen configuration's runs
        frame["test_acc"] = [tested["runs"].get(str(n)) for n in frame["number"]]
    if as_json:
        print_json(trial_records(all_trials, frame, configs))
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
    if (line := test_score.describe(tested, the_study.user_attrs.get("objective", "val_acc"))) is not None:
        print(line)


@app.command()
@user_errors
def show(
    study: StudyOpt,
    trial: Annotated[int, typer.Option("--trial", help="Trial number.")],
    storage: StorageOpt = None,
    lines: Annotated[int, typer.Option(help="Log lines to show.")] = 15,
    errors: Annotated[bool, typer.Option("--errors", help="What the trial's checkpoint gets wrong on the validation set: worst classes, most confused pairs.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="With --errors: a folder for the most confidently wrong images (PNG), confusion.csv and errors.html.")] = None,
    trials_dir: TrialsDirOpt = Path("trials"),
    artifacts: ArtifactsOpt = None,
    gpus: GpusOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One trial: its state, the resolved config and the tail of its log; --errors: what its checkpoint gets wrong."""
    from sweeper.analyze import test_score
    from sweeper.analyze.report_data import trial_config_text
    from sweeper.errors import SpecError, StorageError

    if out is not None:
        if not errors:
            raise SpecError("--out", [("", "writes what --errors finds; add --errors")])
        check_output_dir("--out", out)
    device = scoring_device(gpus) if errors else None
    the_study = open_study(study, storage)
    found = [t for t in the_study.get_trials(deepcopy=False) if t.number == trial]
    if not found:
        raise StorageError(f"study {study!r} has no trial {trial} "
                           f"(trials 0-{len(the_study.trials) - 1})")
    t = found[0]
    files = trial_files(the_study, artifacts)
    if errors:
        _show_errors(t, study, files, trials_dir, device, out, as_json)
        return
    config = trial_config_text(t, files)
    log = files.read(t, "log.txt")
    # redacted as shown: a study written before redaction may hold credentials
    log_tail = redact(log.decode(errors="replace")).splitlines()[-lines:] if log is not None else []
    tested = test_score.stored(the_study)
    tested = tested if tested is not None and str(t.number) in tested.get("runs", {}) else None
    info = {"trial": t.number, "state": t.state.name, "value": t.value, "params": t.params,
            "intermediate_values": t.intermediate_values, "user_attrs": t.user_attrs,
            "test_acc": tested["runs"][str(t.number)] if tested else None,
            "config": json.loads(config) if config else None, "log_tail": log_tail}
    if as_json:
        print_json(info)
        return
    reason = redact(t.user_attrs["reason"]) if t.user_attrs.get("reason") else None
    print(f"trial {t.number}: {t.state.name}" + (f" {t.value:.4f}" if t.value is not None else "")
          + (f" ({reason})" if reason else ""))
    if tested:
        print(f"test accuracy {info['test_acc']:.4f} on {tested['test_images']} test images: this trial "
              f"is a run of the chosen configuration (trial {tested['trial']}), scored once when the sweep ended")
    print(files.where(t))
    print("config (config.json):")
    print(config or "  (missing)")
    print(f"log (log.txt, last {len(log_tail)} lines):")
    print("\n".join(log_tail) or "  (missing)")


def _show_errors(trial, study: str, files, trials_dir: Path, device, out: Path | None, as_json: bool,
                 worst: int = 10) -> None:
    from sweeper.analyze import errors as error_analysis
    from sweeper.analyze.report_errors import write_files

    found = error_analysis.of_trial(
        trial, study, files, trials_dir,
        lambda member, images: member_probabilities([member], images, "none", f"scoring trial {trial.number}", device)[0])
    written = [str(p) for p in write_files(found, out)] if out is not None else []
    if as_json:
        print_json({**error_analysis.summary(found), "written": written})
        return
    reported = f" (its value: {found.objective} {trial.value:.4f})" if trial.value is not None else ""
    print(f"trial {trial.number} on {len(found.labels)} validation images: accuracy {found.accuracy:.4f}"
          f"{reported}, balanced {found.balanced_accuracy:.4f}"
          + (f"; the checkpoint holds the EMA of the weights (decay {found.ema_decay})" if found.ema_decay else ""))
    classes = error_analysis.per_class(found).head(worst)
    print(f"\nworst {len(classes)} classes:")
    print(classes.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-"))
    pairs = error_analysis.confused_pairs(found)
    print("\nmost confused pairs (true -> predicted):")
    print(pairs.to_string(index=False, float_format=lambda v: f"{v:.4f}") if not pairs.empty else "  none")
    if written:
        print(f"\nwrote {len(written)} files to {out}: errors.html, confusion.csv and the most "
              "confidently wrong images")
