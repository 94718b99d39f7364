"""Dataset statistics in one streaming pass, and a self-contained HTML report with matplotlib plots."""

from __future__ import annotations

import base64
import html
import io
import math
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dataset import MMDataset
from .images import inspect, is_url, resolve
from .ops import canonical_or_none, row_text
from .schema import detect
from .words import label

PERCENTILES = (50, 90, 99)
KEEP_UNREADABLE = 100  # unreadable rows listed by line; the count covers them all
SAMPLES = 5
DISTRIBUTIONS = ("turns_per_row", "text_chars", "images_per_row", "image_width", "image_height")


@dataclass
class Tally:
    """Per-row numbers kept as compact arrays (4 bytes a row each), so a million rows stay small."""

    root: Path = Path(".")
    read_images: bool = False
    rows: int = 0
    schemas: Counter = field(default_factory=Counter)
    roles: Counter = field(default_factory=Counter)
    unreadable: int = 0
    unreadable_lines: list = field(default_factory=list)  # (line, reason), the first KEEP_UNREADABLE
    samples: list = field(default_factory=list)  # (line, schema, canonical row), the first SAMPLES
    turns: array = field(default_factory=lambda: array("I"))
    chars: array = field(default_factory=lambda: array("I"))
    images: array = field(default_factory=lambda: array("I"))
    widths: array = field(default_factory=lambda: array("I"))
    heights: array = field(default_factory=lambda: array("I"))
    image_problems: int = 0
    urls: int = 0


def tally(ds: MMDataset, root: Path, open_images: bool = False) -> Tally:
    """One pass over the rows; image sizes are read (headers only) when ``open_images``."""
    t = Tally(root=root, read_images=open_images)
    for rec in ds.records():
        if rec.error:
            t.unreadable += 1
            if len(t.unreadable_lines) < KEEP_UNREADABLE:
                t.unreadable_lines.append((rec.row, rec.error))
            continue
        t.rows += 1
        canon = canonical_or_none(rec.data)
        t.schemas[detect(rec.data) if canon else "unknown"] += 1
        if canon is None:
            continue
        if len(t.samples) < SAMPLES:
            t.samples.append((rec.row, detect(rec.data), canon))
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


def integer_edges(low: int, high: int, bins: int) -> np.ndarray:
    """At most ``bins`` bins of whole-number width covering ``low..high``, so no bin splits an integer."""
    width = max(1, math.ceil((high - low + 1) / bins))
    return low + width * np.arange(math.ceil((high - low + 1) / width) + 1)


def distribution(values: array, bins: int = 10) -> dict:
    """min, max, mean, percentiles (values that occur) and an integer-binned histogram of counts."""
    v = np.frombuffer(values, dtype=np.uint32) if len(values) else np.zeros(0, np.uint32)
    if v.size == 0:
        return {"count": 0}
    edges = integer_edges(int(v.min()), int(v.max()), bins)
    counts, _ = np.histogram(v, bins=edges)
    out = {"count": int(v.size), "min": int(v.min()), "max": int(v.max()), "mean": round(float(v.mean()), 2)}
    out.update({f"p{p}": int(np.percentile(v, p, method="inverted_cdf")) for p in PERCENTILES})
    out["histogram"] = {"counts": counts.tolist(), "edges": edges.tolist()}
    return out


def summarize(t: Tally) -> dict:
    """The statistics as one JSON-ready document; ``rows`` counts every row read, as ``info`` does."""
    return {
        "rows": t.rows, "unreadable_rows": t.unreadable, "unreadable_lines": [line for line, _ in t.unreadable_lines],
        "schemas": dict(t.schemas), "roles": dict(t.roles),
        "turns_per_row": distribution(t.turns), "text_chars": distribution(t.chars),
        "images_per_row": distribution(t.images),
        "image_width": distribution(t.widths), "image_height": distribution(t.heights),
        "images_unreadable": t.image_problems, "image_urls": t.urls,
    }


def cell(value) -> str:
    """A summary value as one line (histograms left out)."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items() if k != "histogram")
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)


# ---- the HTML report ----------------------------------------------------------------------------------

_STYLE = ("body{font-family:sans-serif;margin:2em}td,th{text-align:left;padding:2px 12px;vertical-align:top}"
          "td.n{text-align:right}figure{display:inline-block;margin:8px}table{border-collapse:collapse;margin:1em 0}"
          "tr:nth-child(even){background:#f4f6fa}img.thumb{max-width:96px;max-height:96px}")
_PLOTS = (("turns", "turns_per_row", "turns in the row"), ("chars", "text_chars", "characters of text"),
          ("images", "images_per_row", "images in the row"), ("widths", "image_width", "width in pixels"),
          ("heights", "image_height", "height in pixels"))


def _plot(values: array, title: str, xlabel: str) -> str:
    """A histogram with whole-number bins and axes, as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; plots only go into the page
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    v = np.frombuffer(values, dtype=np.uint32)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.hist(v, bins=integer_edges(int(v.min()), int(v.max()), 40) - 0.5, color="#3b7dd8")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows" if "row" in title else "images")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def report_html(t: Tally, title: str) -> str:
    """A self-contained page: counts, distributions, unreadable lines, sample rows and histograms."""
    summary = summarize(t)
    figures = "".join(f'<figure><img alt="{html.escape(label(key))}" '
                      f'src="data:image/png;base64,{_plot(getattr(t, attr), label(key), x)}"></figure>'
                      for attr, key, x in _PLOTS if len(getattr(t, attr)))
    e = html.escape
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{e(title)}</h1>"
            f"{_counts_table(summary)}<h2>Distributions</h2>{_distribution_table(summary)}"
            f"{_unreadable_table(t)}<h2>Sample rows</h2>{_samples_table(t)}{figures}</body></html>\n")


def _counts_table(summary: dict) -> str:
    keys = ("rows", "unreadable_rows", "schemas", "roles", "images_unreadable", "image_urls")
    words = {k: ", ".join(f"{name} {n}" for name, n in v.items()) if isinstance(v, dict) else str(v)
             for k, v in summary.items() if k in keys}
    return "<table>" + "".join(f"<tr><th>{html.escape(label(k))}</th><td>{html.escape(words[k] or 'none')}</td></tr>"
                               for k in keys) + "</table>"


def _distribution_table(summary: dict) -> str:
    head = ("", "rows", "min", "median", "90th percentile", "99th percentile", "max", "mean")
    body = ""
    for key in DISTRIBUTIONS:
        d = summary[key]
        cells = [d.get(k, "") for k in ("count", "min", "p50", "p90", "p99", "max", "mean")]
        body += f"<tr><th>{html.escape(label(key))}</th>" + "".join(f"<td class='n'>{c}</td>" for c in cells) + "</tr>"
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + f"</tr>{body}</table>"


def _unreadable_table(t: Tally) -> str:
    if not t.unreadable_lines:
        return ""
    more = t.unreadable - len(t.unreadable_lines)
    rows = "".join(f"<tr><td class='n'>{line}</td><td>{html.escape(reason)}</td></tr>"
                   for line, reason in t.unreadable_lines)
    tail = f"<p>and {more} more</p>" if more > 0 else ""
    return f"<h2>{label('unreadable_lines')}</h2><table><tr><th>line</th><th>why</th></tr>{rows}</table>{tail}"


def _samples_table(t: Tally) -> str:
    rows = ""
    for line, schema, canon in t.samples:
        turns = "<br>".join(f"<b>{html.escape(x['role'])}</b>: {html.escape(_short(x['text']))}"
                            for x in canon["turns"][:4])
        images = " ".join(_thumbnail(ref, t.root, t.read_images) for ref in canon["images"][:4])
        rows += f"<tr><td class='n'>{line}</td><td>{schema}</td><td>{images}</td><td>{turns}</td></tr>"
    return f"<table class='samples'><tr><th>line</th><th>schema</th><th>images</th><th>turns</th></tr>{rows}</table>"


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _thumbnail(ref, root: Path, read: bool) -> str:
    """An image as a small inline JPEG (a URL or an unreadable file as its path)."""
    from PIL import Image

    name = html.escape(str(ref))
    if not read or not isinstance(ref, str) or not ref or is_url(ref):
        return f"<code>{name}</code>"
    try:
        with Image.open(resolve(ref, root)) as im:
            im.thumbnail((96, 96))
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="JPEG", quality=80)
    except Exception:  # PIL raises many kinds; the page still shows which file it was
        return f"<code>{name} (unreadable)</code>"
    return f'<img class="thumb" title="{name}" alt="{name}" src="data:image/jpeg;base64,' \
           f'{base64.b64encode(buf.getvalue()).decode()}">'
