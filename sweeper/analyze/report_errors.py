"""The report's "What the best model gets wrong" section, and `show --errors --out`'s files:
worst classes, the confusion matrix as a plotly heatmap, the most confused pairs and a gallery
of the most confidently wrong validation images (thumbnails inside the HTML, so it stays one
offline file)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from sweeper.analyze import errors as analysis

TITLE = "What the best model gets wrong"
CELL_TEXT_UP_TO = 30  # classes; past this the counts are in the hover only
WORST_SHOWN = 50  # rows of the per-class table in the report (the JSON and CSV have every class)


def confusion_figure(e: analysis.Errors) -> go.Figure:
    """The confusion matrix, clustered; past analysis.MATRIX_UP_TO classes, only the rows and
    columns of the classes most confused."""
    shown = analysis.most_confused(e.confusion) if len(e.classes) > analysis.MATRIX_UP_TO else list(range(len(e.classes)))
    sub = e.confusion[np.ix_(shown, shown)]
    order = [shown[i] for i in analysis.class_order(sub)]
    names = [e.classes[i] for i in order]
    counts = e.confusion[np.ix_(order, order)]
    of = (f"the {len(shown)} classes (of {len(e.classes)}) most confused; "
          if len(shown) < len(e.classes) else "")
    off = counts.copy()
    np.fill_diagonal(off, 0)
    # the colour saturates at the largest confusion: the diagonal would otherwise wash it out
    top = max(int(off.max()), 1)
    many = len(names) > CELL_TEXT_UP_TO
    fig = go.Figure(go.Heatmap(
        z=counts.tolist(), x=names, y=names, zmin=0, zmax=top, colorscale="Blues",
        colorbar={"title": "images"}, xgap=0 if many else 1, ygap=0 if many else 1,
        texttemplate=None if many else "%{z}",
        hovertemplate="true %{y}<br>predicted %{x}<br>%{z} image(s)<extra></extra>"))
    side = max(460, min(2400, 160 + 14 * len(names)))
    fig.update_layout(
        title=f"Confusion matrix of trial {e.trial.number} ({of}rows: true class; colour saturates at "
              f"{top}, the largest confusion; classes confused with each other side by side)",
        xaxis={"title": "predicted", "tickfont": {"size": 9 if many else 12}, "showticklabels": len(names) <= 150},
        yaxis={"title": "true", "autorange": "reversed", "tickfont": {"size": 9 if many else 12},
               "showticklabels": len(names) <= 150},
        height=side)
    return fig


def _table(frame, classes: str) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", classes=classes, na_rep="-")


def _gallery(e: analysis.Errors) -> str:
    wrong = analysis.confidently_wrong(e)
    if wrong.empty:
        return "<p>No validation image is wrong.</p>"
    cells = []
    for r in wrong.itertuples():
        data = base64.b64encode(analysis.thumbnail(e.images[r.index], "JPEG")).decode()
        caption = (f"#{r.rank} {html.escape(r.file)}<br>true <b>{html.escape(r.true)}</b> "
                   f"({r.true_probability:.2f}), predicted <b>{html.escape(r.predicted)}</b> "
                   f"({r.probability:.2f})")
        cells.append(f"<figure class='wrong'><img src='data:image/jpeg;base64,{data}' "
                     f"alt='{html.escape(r.file)}'><figcaption>{caption}</figcaption></figure>")
    return f"<div class='gallery'>{''.join(cells)}</div>"


def section_html(found: analysis.Errors | str) -> str:
    """The section's body: figures and tables, or why they cannot be shown."""
    if isinstance(found, str):
        return f"<p class='missing'>Cannot be shown: {html.escape(found)}</p>"
    e = found
    classes = analysis.per_class(e)
    shown = classes.head(WORST_SHOWN)
    more = (f"<p>{len(classes) - len(shown)} more classes, each at accuracy "
            f"{classes['accuracy'].iloc[len(shown)]:.4g} or above (`sweeper show --errors --json` lists "
            "every class).</p>") if len(classes) > len(shown) else ""
    pairs = analysis.confused_pairs(e)
    reported = f" (the trial's value: {e.objective} {e.trial.value:.4f})" if e.trial.value is not None else ""
    return "".join([
        f"<p>Trial {e.trial.number}'s checkpoint on its {len(e.labels)} validation images, through "
        f"what validation ran: accuracy {e.accuracy:.4f}{reported}, balanced accuracy "
        f"{e.balanced_accuracy:.4f}.</p>",
        *([f"<p class='ema'>Its checkpoint, like each of its validation scores, holds the EMA of "
           f"the weights (decay {e.ema_decay}), not the last step's weights.</p>"] if e.ema_decay else []),
        "<h3>Accuracy per class, worst first</h3>", _table(shown, "per-class"), more,
        "<h3>Most confused pairs</h3>",
        _table(pairs, "pairs") if not pairs.empty else "<p>No class is confused with another.</p>",
        "<h3>Confusion matrix</h3>",
        confusion_figure(e).to_html(full_html=False, include_plotlyjs=False, default_width="100%"),
        f"<h3>Most confidently wrong validation images (up to {analysis.GALLERY})</h3>", _gallery(e)])


STYLE = (".gallery{display:flex;flex-wrap:wrap;gap:8px}"
         ".wrong{margin:0;width:150px;font-size:12px}"
         # tiny images scaled up as pixels, not blurred
         ".wrong img{width:128px;height:128px;object-fit:contain;image-rendering:pixelated;display:block}")


def write_files(e: analysis.Errors, out: Path) -> list[Path]:
    """`show --errors --out DIR`: the gallery as PNGs named rank_true_pred, the confusion matrix
    and per-class accuracy as CSV, and errors.html (the report's section, on its own)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for r in analysis.confidently_wrong(e).itertuples():
        path = out / f"{r.rank:02d}_true-{_safe(r.true)}_pred-{_safe(r.predicted)}.png"
        path.write_bytes(analysis.thumbnail(e.images[r.index]))
        written.append(path)
    order = analysis.class_order(e.confusion)
    names = [e.classes[i] for i in order]
    matrix = pd.DataFrame(e.confusion[np.ix_(order, order)], index=pd.Index(names, name="true \\ predicted"),
                          columns=names)
    for name, frame, index in (("confusion.csv", matrix, True), ("per_class.csv", analysis.per_class(e), False),
                               ("confused_pairs.csv", analysis.confused_pairs(e), False),
                               ("confidently_wrong.csv", analysis.confidently_wrong(e), False)):
        frame.to_csv(out / name, index=index)
        written.append(out / name)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>trial {e.trial.number}: errors</title>"
            f"<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}"
            f"td,th{{border:1px solid #ddd;padding:4px 8px;text-align:left}}{STYLE}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            f"<h1>What trial {e.trial.number} gets wrong</h1>{section_html(e)}</body></html>")
    (out / "errors.html").write_text(page, encoding="utf-8")
    return written + [out / "errors.html"]


def _safe(name: str) -> str:
    """A class name as part of a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"
