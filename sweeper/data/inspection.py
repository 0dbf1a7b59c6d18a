"""`sweeper data inspect`: look at a dataset before training on it.

Images per class and split (the split `run` makes), the imbalance ratio, image sizes read from
file headers (no decoding), grayscale / palette / alpha counts, byte-identical duplicates within
and across splits, and unreadable files with the reason.
"""

from __future__ import annotations

import hashlib
import html
import os
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sweeper.data import datasets
from sweeper.data.image_file import open_image

GRAYSCALE = {"1", "L", "LA", "I", "I;16", "F"}
PALETTE = {"P", "PA"}
ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}


@dataclass
class Inspection:
    name: str
    classes: list[str]
    counts: dict[str, list[int]]  # split -> images per class
    sizes: list[tuple[int, int, str]] = field(default_factory=list)  # (width, height, split)
    modes: Counter = field(default_factory=Counter)  # grayscale / palette / alpha / rgb
    duplicates: list[list[tuple[str, str]]] = field(default_factory=list)  # groups of (file, split)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def imbalance(self, split: str) -> float | None:
        """Largest / smallest class; None when a class has no image in this split."""
        counts = self.counts[split]
        return max(counts) / min(counts) if min(counts) > 0 else None

    def duplicate_kinds(self) -> dict[str, int]:
        """Groups of identical files within one split, and across two (or three) splits: a test
        image that is also a train image measures memory, not generalisation."""
        order = list(self.counts)
        kinds = Counter()
        for group in self.duplicates:
            splits = sorted({s for _, s in group}, key=order.index)
            kinds[f"across {' and '.join(splits)}" if len(splits) > 1 else f"within {splits[0]}"] += 1
        names = [f"within {s}" for s in order] + [f"across {a} and {b}" for i, a in enumerate(order)
                                                  for b in order[i + 1:]]
        return {k: kinds.get(k, 0) for k in names + sorted(set(kinds) - set(names))}

    def to_json(self) -> dict:
        sizes = [(w, h) for w, h, _ in self.sizes]
        return {
            "dataset": self.name, "classes": self.classes,
            "images": {split: dict(zip(self.classes, counts)) for split, counts in self.counts.items()},
            "totals": {split: sum(counts) for split, counts in self.counts.items()},
            "imbalance": {split: self.imbalance(split) for split in self.counts},
            "sizes": _size_summary(sizes), "modes": dict(self.modes),
            "duplicates": {"groups": [[f for f, _ in g] for g in self.duplicates], **self.duplicate_kinds()},
            "unreadable": [{"file": f, "reason": r} for f, r in self.unreadable],
        }


def _size_summary(sizes: list[tuple[int, int]]) -> dict:
    if not sizes:
        return {}
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    common = Counter(sizes).most_common(3)
    return {"width": {"min": min(widths), "median": statistics.median(widths), "max": max(widths)},
            "height": {"min": min(heights), "median": statistics.median(heights), "max": max(heights)},
            "most_common": [{"size": f"{w}x{h}", "images": n} for (w, h), n in common]}


def _kind(mode: str, info: dict) -> str:
    if mode in ALPHA or (mode == "P" and "transparency" in info):
        return "alpha"
    if mode in PALETTE:
        return "palette"
    return "grayscale" if mode in GRAYSCALE else "rgb"


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _duplicates(files: list[tuple[str, str]], key: Callable[[str], str], size: Callable[[str], int]) -> list[list[tuple[str, str]]]:
    """Groups of byte-identical files: same length first (cheap), then the same hash."""
    by_size = defaultdict(list)
    for item in files:
        by_size[size(item[0])].append(item)
    groups = defaultdict(list)
    for same in by_size.values():
        if len(same) > 1:
            for item in same:
                groups[key(item[0])].append(item)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0][0])


def inspect_folder(root: Path, val_fraction: float, progress: Callable[[int, int], None] | None = None,
                   test_fraction: float = 0.0, test: str | None = None) -> Inspection:
    listing = datasets.list_folder(root, val_fraction, test_fraction, test)
    n = len(listing.classes)
    result = Inspection(root.name, listing.classes, {})
    files = []
    splits = [("train", listing.train), ("val", listing.val)] + ([("test", listing.test)] if listing.test else [])
    for split, items in splits:
        result.counts[split] = np.bincount([y for _, y in items], minlength=n).tolist()
        files += [(p, split) for p, _ in items]
    readable = []
    for i, (path, split) in enumerate(files):
        rel = os.path.relpath(path, root)
        try:
            with open_image(path) as im:  # reads the header only; refuses an image above the cap
                result.sizes.append((im.width, im.height, split))
                result.modes[_kind(im.mode, im.info)] += 1
            readable.append((path, split))
        except Exception as exc:
            result.unreadable.append((rel, f"{type(exc).__name__}: {exc}".replace(str(path), rel)))
        if progress:
            progress(i + 1, len(files))
    groups = _duplicates(readable, _digest, lambda p: os.stat(p).st_size)
    result.duplicates = [[(os.path.relpath(p, root), s) for p, s in g] for g in groups]
    return result


def inspect_builtin(name: str, val_fraction: float, test_fraction: float = 0.0) -> Inspection:
    classes, splits = datasets.digits(val_fraction, test_fraction)
    n = len(classes)
    splits = {s: xy for s, xy in splits.items() if s != "test" or test_fraction}
    result = Inspection(name, classes, {s: np.bincount(y, minlength=n).tolist() for s, (_, y) in splits.items()})
    images = [(x, s, i) for s, (xs, _) in splits.items() for i, x in enumerate(xs)]
    result.sizes = [(x.shape[1], x.shape[0], s) for x, s, _ in images]
    result.modes["grayscale"] = len(images)
    index = {f"{s}[{i}]": x for x, s, i in images}
    groups = _duplicates([(k, k.split("[")[0]) for k in index],
                         lambda k: hashlib.sha256(index[k].tobytes()).hexdigest(), lambda k: 0)
    result.duplicates = groups
    return result


def text_report(r: Inspection) -> str:
    width = max(12, *(len(c) for c in r.classes))
    totals = {s: sum(c) for s, c in r.counts.items()}
    lines = [f"{r.name}: {len(r.classes)} classes, " + " / ".join(f"{n} {s}" for s, n in totals.items()) + " images",
             f"{'class':<{width}} " + " ".join(f"{s:>7}" for s in r.counts)]
    for i, c in enumerate(r.classes):
        lines.append(f"{c:<{width}} " + " ".join(f"{counts[i]:>7}" for counts in r.counts.values()))
    for split in r.counts:
        ratio = r.imbalance(split)
        counts = r.counts[split]
        big, small = int(np.argmax(counts)), int(np.argmin(counts))
        lines.append(f"imbalance {split}: " + (f"{ratio:.2f}" if ratio is not None else "inf (a class has none)")
                     + f" (largest {r.classes[big]} {counts[big]}, smallest {r.classes[small]} {counts[small]})")
    s = _size_summary([(w, h) for w, h, _ in r.sizes])
    if s:
        common = ", ".join(f"{c['size']} ({c['images']})" for c in s["most_common"])
        lines.append(f"sizes: width {s['width']['min']}-{s['width']['max']} (median {s['width']['median']:g}), "
                     f"height {s['height']['min']}-{s['height']['max']} (median {s['height']['median']:g}); "
                     f"most common {common}")
    lines.append("modes: " + ", ".join(f"{r.modes.get(k, 0)} {k}" for k in ("rgb", "grayscale", "palette", "alpha")))
    kinds = r.duplicate_kinds()
    lines.append(f"duplicates (same bytes): {len(r.duplicates)} group(s): "
                 + ", ".join(f"{n} {k}" for k, n in kinds.items()))
    for group in r.duplicates[:20]:
        lines.append("  " + " = ".join(f"{f} ({s})" for f, s in group))
    if len(r.duplicates) > 20:
        lines.append(f"  ... and {len(r.duplicates) - 20} more (--json lists all)")
    lines.append(f"unreadable: {len(r.unreadable)}")
    lines += [f"  {f}: {why}" for f, why in r.unreadable]
    return "\n".join(lines)


def html_report(r: Inspection) -> str:
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs

    hist = go.Figure([go.Bar(name=split, x=r.classes, y=counts) for split, counts in r.counts.items()])
    hist.update_layout(title="Images per class", barmode="group", xaxis_title="class", yaxis_title="images")
    scatter = go.Figure([go.Scattergl(name=split, mode="markers", x=[w for w, _, s in r.sizes if s == split],
                                      y=[h for _, h, s in r.sizes if s == split], opacity=0.6)
                         for split in r.counts])
    scatter.update_layout(title="Image sizes", xaxis_title="width (px)", yaxis_title="height (px)")
    figs = "".join(f.to_html(full_html=False, include_plotlyjs=False, default_width="100%",
                             default_height="460px") for f in (hist, scatter))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>sweeper data inspect: "
            f"{html.escape(r.name)}</title><script type='text/javascript'>{get_plotlyjs()}</script>"
            f"</head><body style='font-family:system-ui,sans-serif;margin:2em'>"
            f"<h1>Dataset {html.escape(r.name)}</h1><pre>{html.escape(text_report(r))}</pre>{figs}</body></html>")
