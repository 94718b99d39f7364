"""The arithmetic of a benchmark report: percentiles of repeated timings, rates from per-token times,
decode's share of the memory-bandwidth bound, and the speedup of one report's figures over another's."""

from __future__ import annotations

import math
from typing import Sequence

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between the closest ranks (NumPy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float | None], digits: int = 4) -> dict | None:
    """{"p50", "p90", "p99", "mean"} of the values that are not None; None when none are."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    stats = {f"p{q}": percentile(present, q) for q in PERCENTILES} | {"mean": sum(present) / len(present)}
    return {name: round(value, digits) for name, value in stats.items()}


def tokens_per_s(per_token_s: Sequence[float]) -> float | None:
    """Decode rate of one run: tokens over the time they took (not the mean of per-token rates,
    which a single slow token would barely move)."""
    total = sum(per_token_s)
    return len(per_token_s) / total if per_token_s and total > 0 else None


def rate(count: int, seconds: float | None) -> float | None:
    """count / seconds, None without a positive time."""
    return count / seconds if seconds else None


def roofline(tokens_per_second: float | None, bytes_per_token: int, bandwidth: float) -> dict:
    """Batch-1 decode streams the language model's weights once a token, so read bandwidth /
    bytes per token bounds its rate (DESIGN.md); the share is how much of that bound was reached."""
    bound = bandwidth / bytes_per_token
    return {
        "weight_gb_per_token": round(bytes_per_token / 1e9, 3),
        "read_bandwidth_gb_s": round(bandwidth / 1e9, 1),
        "bound_tokens_per_s": round(bound, 2),
        "share_of_bound": round(tokens_per_second / bound, 3) if tokens_per_second else None,
    }


# Whether a larger figure is better, for each metric a ratio is taken of.
HIGHER_IS_BETTER = {
    "load_s": False, "ttft_s": False, "tpot_s": False, "e2e_s": False, "decode_tokens_per_s": True,
    "aggregate_tokens_per_s": True,
    "prefill_tokens_per_s": True, "peak_rss_mb": False, "images_per_s": True, "step_s": False,
    "vae_decode_s": False, "det_s": False, "cls_s": False, "rec_s": False,
    "train_step_s": False, "train_tokens_per_s": True,
}  # fmt: skip


def speedup(mine: dict, theirs: dict) -> dict:
    """Per metric, how many times better ``mine`` is than ``theirs`` on the p50 (or the plain number):
    their time / my time, my rate / their rate; above 1 means mine is faster (or smaller)."""
    out = {}
    for name, higher in HIGHER_IS_BETTER.items():
        a, b = headline(mine.get(name)), headline(theirs.get(name))
        if a and b:
            out[name] = round(a / b if higher else b / a, 3)
    return out


def headline(value) -> float | None:
    """The figure a metric is compared by: a summary's p50, or the number itself."""
    return value.get("p50") if isinstance(value, dict) else value
