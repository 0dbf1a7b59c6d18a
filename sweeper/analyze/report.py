"""`sweeper report`: StudyData -> plotly figures -> one self-contained HTML file (+ trials.csv)."""

from __future__ import annotations

import html
from pathlib import Path

import optuna
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from sweeper.analyze import report_errors
from sweeper.analyze.errors import Errors
from sweeper.analyze import test_score
from sweeper.analyze.report_data import (
    MIN_FOR_IMPORTANCE,
    Importance,
    StudyData,
    collect,
    value_source,
)

STATE_COLOURS = {"COMPLETE": "#2a9d8f", "PRUNED": "#e9c46a", "FAIL": "#e76f51", "RUNNING": "#8d99ae",
                 "WAITING": "#bbbbbb"}
SECTIONS = ["Summary", "Top trials", "Re-checked configurations", "Hyperparameter importance", "Optimization history",
            "Learning curves", "Parallel coordinates", "Slice plots", "Contour", "Timeline", report_errors.TITLE]
FIGURE_SECTIONS = SECTIONS[3:-1]


def importance_figure(imp: Importance) -> go.Figure:
    fig = go.Figure()
    for name, values in imp.by_evaluator.items():
        params = list(values)[::-1]
        fig.add_bar(name=name, y=params, x=[values[p] for p in params], orientation="h")
    fig.update_layout(barmode="group", title=f"Importance over {imp.n_trials} {imp.label}",
                      xaxis_title="share of importance", height=120 + 40 * max(
                          (len(v) for v in imp.by_evaluator.values()), default=1))
    return fig


def curves_figure(data: StudyData) -> go.Figure:
    fig = go.Figure()
    for number, rows in data.curves.groupby("number", sort=True):
        state = rows["state"].iloc[0]
        fig.add_scatter(x=rows["epoch"], y=rows["value"], mode="lines+markers", name=f"trial {number}",
                        line={"color": STATE_COLOURS.get(state, "#888"),
                              "dash": "solid" if state == "COMPLETE" else "dot"},
                        legendgroup=state, hovertemplate=f"trial {number} ({state.lower()})<br>"
                                                         "epoch %{x}: %{y:.4f}<extra></extra>")
    for promoted, rows in data.pauses.groupby("promoted"):
        what = "paused, then promoted and resumed" if promoted else "paused, never promoted"
        fig.add_scatter(x=rows["epoch"], y=rows["value"], mode="markers", name=what,
                        marker={"symbol": "line-ns-open" if promoted else "x-thin-open", "size": 14,
                                "color": "#264653", "line": {"width": 2}},
                        text=[f"trial {n}" for n in rows["number"]],
                        hovertemplate="%{text}: " + what + " at epoch %{x}<extra></extra>")
    fig.update_layout(title="Validation per epoch (complete: solid; pruned/failed: dotted; "
                            "ASHA pauses marked)", xaxis_title="epoch", yaxis_title=data.objective)
    return fig


def timeline_figure(data: StudyData) -> go.Figure:
    """One bar per stretch a worker ran: a trial ASHA paused shows one bar per segment."""
    fig = go.Figure()
    rows = data.segments.dropna(subset=["start"])
    for state, group in rows.groupby("state"):
        end = group["end"].fillna(group["start"])
        fig.add_bar(
            y=[f"slot {int(s)}" if pd.notna(s) else "slot ?" for s in group["slot"]],
            x=[(e - s).total_seconds() * 1000 for s, e in zip(group["start"], end)],
            base=[s.isoformat() for s in group["start"]], orientation="h", name=state.lower(),
            marker_color=STATE_COLOURS.get(state, "#888"), text=[f"#{n}" for n in group["number"]],
            hovertemplate="trial %{text}<extra></extra>")
    fig.update_layout(title="Trials per worker slot", xaxis_type="date", barmode="overlay")
    return fig


def _top2(imp: Importance) -> list[str] | None:
    for values in imp.by_evaluator.values():
        if len(values) >= 2:
            return list(values)[:2]
    return None


def figures(study: optuna.Study, data: StudyData) -> dict[str, list[go.Figure] | str]:
    """Each section's figures, or the sentence saying why it cannot be shown yet."""
    n = data.counts["COMPLETE"]
    vis = optuna.visualization
    out: dict[str, list[go.Figure] | str] = {}
    imp_figs: list[go.Figure] = []
    for imp in (data.importance, data.importance_with_pruned):
        if imp is not None and not imp.missing:
            imp_figs.append(importance_figure(imp))
    out["Hyperparameter importance"] = imp_figs or (data.importance.missing or "no importances")
    out["Optimization history"] = [vis.plot_optimization_history(study)] if n else \
        "no completed trial yet"
    out["Learning curves"] = [curves_figure(data)] if not data.curves.empty else \
        "no trial has reported an epoch yet"
    if n >= 2:
        out["Parallel coordinates"] = [vis.plot_parallel_coordinate(study)]
        out["Slice plots"] = [vis.plot_slice(study)]
    else:
        out["Parallel coordinates"] = out["Slice plots"] = f"needs 2 completed trials; the study has {n}"
    pair = _top2(data.importance)
    if n >= MIN_FOR_IMPORTANCE and pair:
        out["Contour"] = [vis.plot_contour(study, params=pair)]
        out["Contour"][0].update_layout(title=f"Contour of the two most important: {pair[0]}, {pair[1]}")
    else:
        out["Contour"] = (f"needs {MIN_FOR_IMPORTANCE} completed trials and two searched "
                          f"parameters; the study has {n} completed")
    out["Timeline"] = [timeline_figure(data)] if not data.segments.empty else "no trials yet"
    return out


def _summary_html(data: StudyData) -> str:
    c = data.counts
    rows = [("Trials", f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed, "
                       f"{c['RUNNING']} running"),
            ("Total compute time", f"{data.compute_seconds / 60:.1f} min"),
            ("Epochs", f"{data.epochs_trained} trained, {data.epochs_saved} saved by pruning and "
                       f"pausing, {data.epochs_retrained} retrained")]
    if data.best_configuration is not None:
        rows.insert(0, ("Best configuration", f"trial {data.best_configuration.first.number}: "
                        f"{data.best_configuration.describe(data.objective)}"))
    if data.best is not None:
        params = ", ".join(f"{k}={v}" for k, v in data.best.params.items())
        rows.insert(0, ("Best", f"trial {data.best.number}: {data.objective} {data.best.value:.4f} "
                                f"of {value_source(data.best, data.value_rule)}"))
        rows.insert(1, ("Best params", params))
    else:
        rows.insert(0, ("Best", "no completed trial yet"))
    if (line := test_score.describe(data.test_score, data.objective)) is not None:
        rows.insert(1, ("Test accuracy", line))
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td class='{k.lower().replace(' ', '-')}'>"
                    f"{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table class='summary'>{cells}</table>"


def _top_html(data: StudyData, k: int = 10) -> str:
    done = data.trials[data.trials["state"] == "COMPLETE"]
    if done.empty:
        return "<p class='missing'>no completed trial yet</p>"
    top = done.sort_values("value", ascending=False).head(k)
    top = top.drop(columns=["start", "end", "reason", "state"])
    top.columns = [c.removeprefix("params_") for c in top.columns]
    return top.to_html(index=False, float_format=lambda v: f"{v:.4g}", classes="top", na_rep="")


def _configs_html(data: StudyData) -> str:
    if data.configurations is None:
        return ("<p class='missing'>none yet: `sweeper recheck --study NAME` trains the best "
                "configurations again with new seeds and ranks them by their mean</p>")
    frame = data.configurations.copy()
    frame["lucky"] = frame["lucky"].map({True: "yes: first score > 1 std above the mean", False: ""})
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", classes="configs", na_rep="")


def render_html(study: optuna.Study, data: StudyData, errors: Errors | str) -> str:
    figs = figures(study, data)
    weights = (f"<p class='ema'>Trial {errors.trial.number} was validated on the EMA of its weights "
               f"(decay {errors.ema_decay})</p>") if isinstance(errors, Errors) and errors.ema_decay else ""
    parts = [f"<h2 id='summary'>Summary</h2>{_summary_html(data)}{weights}",
             f"<h2 id='top-trials'>Top trials</h2>{_top_html(data)}"]
    parts.append(f"<h2 id='re-checked-configurations'>Re-checked configurations</h2>{_configs_html(data)}")
    for section in FIGURE_SECTIONS:
        content = figs[section]
        anchor = section.lower().replace(" ", "-")
        parts.append(f"<h2 id='{anchor}'>{html.escape(section)}</h2>")
        if isinstance(content, str):
            parts.append(f"<p class='missing'>Cannot be shown yet: {html.escape(content)}.</p>")
            continue
        if section == "Hyperparameter importance":
            parts.append(f"<p>PED-ANOVA and fANOVA over {data.importance.n_trials} completed trials.</p>")
        for fig in content:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=False,
                                     default_width="100%", default_height="460px"))
    anchor = report_errors.TITLE.lower().replace(" ", "-")
    parts.append(f"<h2 id='{anchor}'>{report_errors.TITLE}</h2>{report_errors.section_html(errors)}")
    toc = " · ".join(f"<a href='#{s.lower().replace(' ', '-')}'>{s}</a>" for s in SECTIONS)
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
             "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}"
             ".missing{color:#a05a00}" + report_errors.STYLE)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>sweeper report: "
            f"{html.escape(data.name)}</title><style>{style}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            f"<h1>Study {html.escape(data.name)}</h1><p>{toc}</p>{''.join(parts)}</body></html>")


def write_report(study: optuna.Study, out: Path, errors: Errors | str) -> tuple[Path, Path, StudyData]:
    """Write the HTML report and trials.csv beside it; returns both paths and the data. `errors`:
    what the best model gets wrong (errors.of_best), or why that cannot be shown."""
    data = collect(study)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(study, data, errors), encoding="utf-8")
    csv_path = out.parent / "trials.csv"
    data.trials.to_csv(csv_path, index=False)
    return out, csv_path, data

