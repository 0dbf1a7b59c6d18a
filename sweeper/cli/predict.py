"""Commands that use trained checkpoints: `ensemble` scores the top-K together, `predict` labels
a folder of images."""

from __future__ import annotations

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
    scoring,
    scoring_device,
    trial_files,
    user_errors,
)
from sweeper.cli.paths import check_output_dir, check_output_file

app = typer.Typer()


@app.command()
@user_errors
def ensemble(
    study: StudyOpt,
    top: Annotated[int, typer.Option(min=1, help="Members: the K best trials by their value.")] = 3,
    method: Annotated[str, typer.Option(help="mean (average the class probabilities) | vote (majority of labels).")] = "mean",
    storage: StorageOpt = None,
    trials_dir: TrialsDirOpt = Path("trials"),
    artifacts: ArtifactsOpt = None,
    gpus: GpusOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score the ensemble of the K best trials on the validation set, beside each member; saves it for `predict`."""
    from sweeper.analyze import ensemble as ens

    check_choice("--method", method, ens.METHODS)
    check_output_dir("--trials-dir", trials_dir)  # ensemble.json goes in <trials-dir>/<study>/
    device = scoring_device(gpus)
    the_study = open_study(study, storage)
    files = trial_files(the_study, artifacts)
    members = ens.top_members(the_study.get_trials(deepcopy=False), top, study, files)
    classes = ens.check_classes(members, the_study.user_attrs)
    images, labels = ens.validation_set(members[0], trials_dir)
    probs = member_probabilities(members, images, "none", "scoring members", device)
    result = {"study": study, **ens.evaluate(members, probs, labels, len(classes), method)}
    path = ens.saved_path(trials_dir, study)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result, "checkpoints": [str(m.checkpoint) for m in members]}, indent=2))
    if as_json:
        print_json({**result, "saved": str(path)})
        return
    print(f"{'':>22} {'accuracy':>9} {'balanced':>9}")
    for r in result["members"]:
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
    artifacts: ArtifactsOpt = None,
    gpus: GpusOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Label every image of a folder with the best trial or a top-K ensemble; writes a CSV."""
    from sweeper.analyze import ensemble as ens
    from sweeper.analyze import predict as predicting
    from sweeper.data.datasets import IMAGE_EXTENSIONS
    from sweeper.errors import DataError

    check_choice("--tta", tta, ens.TTA)
    check_output_file("--out", out)
    device = scoring_device(gpus)
    if not images.is_dir():
        raise DataError(f"--images {images} is not a folder; pass the folder of images to label")
    the_study = open_study(study, storage)
    members, method = predicting.predictors(the_study.get_trials(deepcopy=False), top, study,
                                            ens.saved_path(trials_dir, study), trial_files(the_study, artifacts))
    classes = ens.check_classes(members, the_study.user_attrs)
    paths = ens.list_images(images)
    if not paths:
        raise DataError(f"no images under {images} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    with scoring("predicting", len(members) * len(paths), device) as advance:
        probs, ok, bad = predicting.label_folder(members, paths, tta, device, advance)
    predicted, mean = ens.combine(probs, method)
    predicting.write_csv(out, images, ok, predicted, mean, classes)
    info = {"study": study, "members": [m.trial.number for m in members], "method": method, "tta": tta,
            "written": str(out), "rows": len(ok),
            "unreadable": [{"file": p.relative_to(images).as_posix(), "reason": why} for p, why in bad]}
    if as_json:
        print_json(info)
        return
    who = f"trial {members[0].trial.number}" if len(members) == 1 else \
        f"the {method} ensemble of trials {', '.join(str(n) for n in info['members'])}"
    print(f"{out}: {len(ok)} image(s) labelled by {who}" + (f", tta {tta}" if tta != "none" else ""))
    for item in info["unreadable"]:
        print(f"unreadable, skipped: {item['file']} ({item['reason']})")
