"""Plain data about a study, for the report, `trials`, `studies` and `best`: pandas, no plotting."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from sweeper.analyze.ranking import Configuration, configurations, has_rechecks
from sweeper.search.asha import curve, reached, value_at
from sweeper.artifacts import TrialFiles
from sweeper.redaction import redact
from sweeper.sweep import epochs
from sweeper.sweep.recovery import IMPORTED, RECHECK_OF

MIN_FOR_IMPORTANCE = 3  # completed trials before importances mean anything
# fANOVA's cost grows with trials x trees; past this many trials half of Optuna's 64 trees give
# the same importances to 0.001 (1,000-trial study, benchmarks/overhead.py) in under half the time
FANOVA_FEWER_TREES_FROM = 300


@dataclass
class Importance:
    """Importances by evaluator (param -> share), or why they cannot be computed yet."""

    label: str
    n_trials: int
    by_evaluator: dict[str, dict[str, float]] = field(default_factory=dict)
    missing: str | None = None


@dataclass
class StudyData:
    name: str
    objective: str
    trials: pd.DataFrame  # one row per trial
    curves: pd.DataFrame  # number, state, epoch, value: every reported epoch
    importance: Importance
    importance_with_pruned: Importance | None
    counts: dict[str, int]
    best: FrozenTrial | None
    compute_seconds: float
    epochs_saved: int  # by pruning and pausing
    epochs_trained: int
    epochs_retrained: int  # by retries that could not resume (0 when every epoch resumes)
    segments: pd.DataFrame  # number, state, slot, start, end: each stretch a worker ran
    pauses: pd.DataFrame  # number, epoch, value, promoted: where ASHA paused a trial
    value_rule: str = "last"  # search.value: the last or the best epoch's objective
    configurations: pd.DataFrame | None = None  # after `recheck`: ranked by the mean over seeds
    best_configuration: Any = None  # ranking.Configuration, after `recheck`
    test_score: dict | None = None  # the chosen configuration on the test split (test_score.py)


def _display(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def planned_epochs(trial: FrozenTrial) -> int | None:
    """The epochs a trial was configured for (its attribute, else its config.json)."""
    if "epochs" in trial.user_attrs:
        return trial.user_attrs["epochs"]
    text = trial_config_text(trial)
    return json.loads(text)["epochs"] if text else None


def origin(trial: FrozenTrial) -> str | None:
    """Where a trial came from, when not from the sampler."""
    attrs = trial.user_attrs
    if IMPORTED in attrs:
        return f"imported from {attrs[IMPORTED]}"
    if RECHECK_OF in attrs:
        return f"recheck of {attrs[RECHECK_OF]} (seed +{attrs.get('recheck_seed', '?')})"
    if "retry_of" in attrs:
        return f"retry of {attrs['retry_of']}"
    return None


def configuration_rows(ranked: list[Configuration]) -> pd.DataFrame:
    """Configurations, as ranked, with mean, std and count over their runs beside the first score."""
    columns = ["rank", "config", "mean", "std", "runs", "first", "lucky"]
    rows = [{"rank": i, "config": c.first.number, "mean": c.mean, "std": c.std, "runs": c.count,
             "first": c.first.value, "lucky": c.lucky}
            for i, c in enumerate(ranked, start=1)]
    return pd.DataFrame(rows, columns=columns)


def segment_rows(trials: list[FrozenTrial]) -> pd.DataFrame:
    """The stretches each trial's workers ran (several when ASHA paused and resumed it)."""
    rows = []
    for t in trials:
        # local time, as Optuna's datetime_start is
        spans = [(pd.Timestamp(datetime.fromtimestamp(a)), pd.Timestamp(datetime.fromtimestamp(b)))
                 for a, b in t.user_attrs.get("segments", [])]
        if not spans and t.datetime_start:
            spans = [(pd.Timestamp(t.datetime_start), pd.Timestamp(t.datetime_complete) if t.datetime_complete else None)]
        rows += [{"number": t.number, "state": t.state.name, "slot": t.user_attrs.get("slot"), "start": a, "end": b}
                 for a, b in spans]
    return pd.DataFrame(rows, columns=["number", "state", "slot", "start", "end"])


def pause_rows(trials: list[FrozenTrial]) -> pd.DataFrame:
    rows = []
    for t in trials:
        for epoch in t.user_attrs.get("pauses", []):
            rows.append({"number": t.number, "epoch": epoch, "value": value_at(t, epoch), "promoted": reached(t) > epoch})
    return pd.DataFrame(rows, columns=["number", "epoch", "value", "promoted"])


def trial_rows(trials: list[FrozenTrial]) -> pd.DataFrame:
    """One row per trial: number, state, value, params, epochs, duration, reason, origin, slot, times."""
    rows = []
    for t in trials:
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else t.user_attrs.get("duration_s")
        rows.append({
            "number": t.number, "state": t.state.name, "value": t.value,
            **{f"params_{k}": _display(v) for k, v in t.params.items()},
            "epochs_run": t.user_attrs.get("epochs_run", len(t.intermediate_values)),
            "epochs": planned_epochs(t),
            "duration_s": duration, "reason": redact(r) if (r := t.user_attrs.get("reason")) else None,
            "origin": origin(t), "slot": t.user_attrs.get("slot"),
            "start": t.datetime_start, "end": t.datetime_complete,
        })
    columns = ["number", "state", "value", "epochs_run", "epochs", "duration_s", "reason", "origin",
               "slot", "start", "end"]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=columns)
    params = sorted(c for c in frame.columns if c.startswith("params_"))
    return frame[columns[:3] + params + columns[3:]]


def _importance(study_trials: list[FrozenTrial], label: str) -> Importance:
    n = len(study_trials)
    result = Importance(label, n)
    if n < MIN_FOR_IMPORTANCE:
        result.missing = (f"needs at least {MIN_FOR_IMPORTANCE} completed trials; "
                          f"the study has {n}")
        return result
    scratch = optuna.create_study(direction="maximize")
    scratch.add_trials(study_trials)
    evaluators = {"PED-ANOVA": optuna.importance.PedAnovaImportanceEvaluator(),
                  "fANOVA": optuna.importance.FanovaImportanceEvaluator(
                      n_trees=64 if n < FANOVA_FEWER_TREES_FROM else 32, seed=0)}
    for name, evaluator in evaluators.items():
        try:
            with warnings.catch_warnings():  # few-trial warnings: the report states the count
                warnings.simplefilter("ignore")
                result.by_evaluator[name] = optuna.importance.get_param_importances(
                    scratch, evaluator=evaluator)
        except Exception as exc:  # e.g. every trial has the same params
            result.missing = redact(f"{name}: {exc}")
    if not any(result.by_evaluator.values()):
        result.missing = result.missing or "no parameter varies across the completed trials"
    return result


def _as_completed(trial: FrozenTrial) -> FrozenTrial:
    """A pruned trial standing in as complete, valued at its last report (a half-epoch rung's too)."""
    values = curve(trial)
    last = values[max(values)]
    return optuna.trial.create_trial(params=trial.params, distributions=trial.distributions,
                                     value=last, intermediate_values=trial.intermediate_values)


def collect(study: optuna.Study) -> StudyData:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and curve(t)]
    counts = {s.name: sum(t.state == s for t in trials)
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    with_pruned = None
    finished = counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"]
    if pruned and len(pruned) >= max(2, finished // 4):
        # pruned trials' reasons (non-finite loss) are kept out: their value says nothing
        usable = [t for t in pruned if t.user_attrs.get("reason") != "non-finite loss"]
        with_pruned = _importance(complete + [_as_completed(t) for t in usable],
                                  "completed + pruned trials, pruned ones by their last reported value")
    curves = pd.DataFrame(
        [{"number": t.number, "state": t.state.name, "epoch": e, "value": v}
         for t in trials for e, v in curve(t).items()],  # a part-epoch rung's value (0.5) too
        columns=["number", "state", "epoch", "value"])
    frame = trial_rows(trials)
    ranked = configurations(trials) if has_rechecks(trials) else []  # by the mean over seeds
    return StudyData(
        name=study.study_name, objective=study.user_attrs.get("objective", "value"),
        trials=frame, curves=curves,
        importance=_importance(complete, "completed trials"),
        importance_with_pruned=with_pruned, counts=counts,
        best=max(complete, key=lambda t: t.value) if complete else None,
        compute_seconds=float(frame["duration_s"].fillna(0).sum()) if not frame.empty else 0.0,
        epochs_saved=epochs.saved(trials),
        epochs_trained=epochs.trained(trials),
        epochs_retrained=epochs.retrained(trials),
        segments=segment_rows(trials),
        pauses=pause_rows(trials),
        value_rule=study.user_attrs.get("value", "last"),
        configurations=configuration_rows(ranked) if ranked else None,
        best_configuration=ranked[0] if ranked else None,
        test_score=study.user_attrs.get("test_score"),
    )


def value_source(trial: FrozenTrial, rule: str) -> str:
    """Which epoch a completed trial's value comes from, in words."""
    epoch = trial.user_attrs.get("value_epoch")
    if epoch is None:
        return f"the {rule} epoch"
    return f"the {rule} epoch (epoch {epoch} of {trial.user_attrs.get('epochs_run', epoch)})"


def trial_config_text(trial: FrozenTrial, files: TrialFiles = TrialFiles(None)) -> str | None:
    data = files.read(trial, "config.json")
    return data.decode() if data is not None else None


def study_rows(storage) -> list[dict[str, Any]]:
    """`studies`: each study's trial counts by state, best value and epochs trained/saved/retrained."""
    rows = []
    for s in storage.get_all_studies():
        trials = storage.get_all_trials(s._study_id, deepcopy=False)
        count = {st.name.lower(): sum(t.state == st for t in trials)
                 for st in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
        values = [t.value for t in trials if t.state == TrialState.COMPLETE]
        rows.append({"study": s.study_name, "trials": len(trials), **count,
                     "best": max(values) if values else None, "epochs_trained": epochs.trained(trials),
                     "epochs_saved": epochs.saved(trials), "epochs_retrained": epochs.retrained(trials)})
    return rows


def trial_records(trials: list[FrozenTrial], frame: pd.DataFrame,
                  configs: pd.DataFrame | None) -> list[dict[str, Any]]:
    """`trials --json`: one record per trial (missing values as None), with its configuration's
    mean, std and runs after `recheck`."""
    def records(f: pd.DataFrame) -> list[dict[str, Any]]:
        return f.astype(object).where(f.notna(), None).to_dict(orient="records")

    out = records(frame)
    if configs is not None:
        by_config = {r["config"]: r for r in records(configs)}
        for row, t in zip(out, trials):
            key = t.user_attrs.get(RECHECK_OF, t.number)
            if key in by_config:
                c = by_config[key]
                row.update(config=key, config_mean=c["mean"], config_std=c["std"], config_runs=c["runs"])
    return out
