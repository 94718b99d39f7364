"""Dataset statistics in one streaming pass, and a self-contained HTML report with matplotlib plots."""

from __future__ import annotations

import base64
import html
import io
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dataset import MMDataset
from .images import inspect, is_url
from .ops import canonical_or_none, row_text
from .schema import detect

PERCENTILES = (50, 90, 99)


@dataclass
class Tally:
    """Per-row numbers kept as compact arrays (4 bytes a row each), so a million rows stay small."""

    schemas: Counter = field(default_factory=Counter)
    roles: Counter = field(default_factory=Counter)
    unreadable: int = 0
    turns: array = field(default_factory=lambda: array("I"))
    chars: array = field(default_factory=lambda: array("I"))
    images: array = field(default_factory=lambda: array("I"))
    widths: array = field(default_factory=lambda: array("I"))
    heights: array = field(default_factory=lambda: array("I"))
    image_problems: int = 0
    urls: int = 0


def tally(ds: MMDataset, root: Path, open_images: bool = False) -> Tally:
    """One pass over the rows; image sizes are read (headers only) when ``open_images``."""
    t = Tally()
    for rec in ds.records():
        if rec.error:
            t.unreadable += 1
            continue
        canon = canonical_or_none(rec.data)
        t.schemas[detect(rec.data) if canon else "unknown"] += 1
        if canon is None:
            continue
        t.roles.update(turn["role"] for turn in canon["turns"])
        t.turns.append(len(canon["turns"]))
        t.chars.append(len(row_text(canon)))
        t.images.append(len(canon["images"]))
        if open_images:
            _image_sizes(t, canon["images"], root)
    return t


def _image_sizes(t: Tally, refs: list, root: Path) -> None:
    for ref in refs:
        if isinstance(ref, str) and is_url(ref):
            t.urls += 1
            continue
        info = inspect(ref, root, decode=False)
        if info.error:
            t.image_problems += 1
        else:
            t.widths.append(info.width)
            t.heights.append(info.height)


def distribution(values: array, bins: int = 10) -> dict:
    """min, max, mean, percentiles and a histogram of a sequence of counts."""
    v = np.frombuffer(values, dtype=np.uint32) if len(values) else np.zeros(0, np.uint32)
    if v.size == 0:
        return {"count": 0}
    counts, edges = np.histogram(v, bins=bins)
    out = {"count": int(v.size), "min": int(v.min()), "max": int(v.max()), "mean": round(float(v.mean()), 3)}
    out.update({f"p{p}": float(np.percentile(v, p)) for p in PERCENTILES})
    out["histogram"] = {"counts": counts.tolist(), "edges": [round(float(e), 3) for e in edges]}
    return out


def summarize(t: Tally) -> dict:
    """The statistics as one JSON-ready document."""
    return {
        "rows": len(t.turns), "unreadable_rows": t.unreadable, "schemas": dict(t.schemas), "roles": dict(t.roles),
        "turns_per_row": distribution(t.turns), "text_chars": distribution(t.chars),
        "images_per_row": distribution(t.images),
        "image_width": distribution(t.widths), "image_height": distribution(t.heights),
        "images_unreadable": t.image_problems, "image_urls": t.urls,
    }


def _plot(values: array, title: str, xlabel: str) -> str:
    """A histogram as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; plots only go into the page
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.hist(np.frombuffer(values, dtype=np.uint32), bins=40, color="#3b7dd8")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def report_html(t: Tally, title: str) -> str:
    """A self-contained page: summary table and the histograms embedded as data-URL PNGs."""
    summary = summarize(t)
    plots = [(t.turns, "Turns per row", "turns"), (t.chars, "Text length", "characters"),
             (t.images, "Images per row", "images"), (t.widths, "Image width", "pixels"),
             (t.heights, "Image height", "pixels")]
    figures = "".join(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{_plot(v, name, x)}">'
                      f"</figure>" for v, name, x in plots if len(v))
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(cell(v))}</td></tr>" for k, v in summary.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{text-align:left;padding:2px 12px;"
            "vertical-align:top}figure{display:inline-block;margin:8px}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table>{rows}</table>{figures}</body></html>\n")


def cell(value) -> str:
    """A summary value as one line (histograms left out)."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items() if k != "histogram")
    return str(value)
