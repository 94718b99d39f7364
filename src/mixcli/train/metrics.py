"""What people look at during and after a run: metrics.jsonl (one object per logged step) and loss.png."""

from __future__ import annotations

import json
import os
from pathlib import Path

METRICS, PLOT = "metrics.jsonl", "loss.png"


def append(out: Path, row: dict) -> None:
    with open(out / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def read(out: Path) -> list[dict]:
    path = out / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def truncate(out: Path, step: int) -> None:
    """Drop the rows logged after ``step`` (a resumed run logs those steps again)."""
    rows = [r for r in read(out) if r["step"] <= step]
    (out / METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def plot(out: Path) -> None:
    """loss.png: train loss and eval loss against step (written to a temporary file, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = read(out)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for points, label, style in ((train, "train loss", "-"), (evals, "eval loss", "o-")):
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    tmp = out / f".{PLOT}.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out / PLOT)
