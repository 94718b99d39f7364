"""Semantic dedup's search at scale: random unit vectors of dim 512 with one planted near-copy per thousand rows
(cosine about 0.96), threshold 0.9, through FAISS (flat up to FLAT_MAX rows, IVF past it) and through the blocked
NumPy/BLAS exact search, one run each: wall and CPU seconds (the CPU time is the fairer figure on a shared
machine), rows/s, the peak RSS growth, and the share of planted pairs found.

    MIX_BENCH_EMBEDS=100000,1000000 MIX_BENCH_INDEX=faiss,numpy nice pytest benchmarks/bench_dedup.py -s
"""

from __future__ import annotations

import os
import resource
import time

import numpy as np
import pytest

DIM, THRESHOLD = 512, 0.9
ROWS = [int(n) for n in os.environ.get("MIX_BENCH_EMBEDS", "100000").split(",")]
INDEXES = os.environ.get("MIX_BENCH_INDEX", "faiss,numpy").split(",")


def planted(rows: int, seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """Unit rows; row 1000k + 1 is a noisy copy of row 1000k."""
    rng = np.random.default_rng(seed)
    embeds = rng.standard_normal((rows, DIM), dtype=np.float32)
    originals = np.arange(0, rows - 1, 1000)
    embeds[originals + 1] = embeds[originals] + 0.3 * rng.standard_normal((len(originals), DIM), dtype=np.float32)
    embeds /= np.linalg.norm(embeds, axis=1, keepdims=True)
    return embeds, {(int(i), int(i) + 1) for i in originals}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("index", INDEXES)
@pytest.mark.parametrize("rows", ROWS)
def test_semantic_search(rows, index, benchmark):
    from mixcli.datacopilot.semantic import FLAT_MAX, search_pairs

    embeds, truth = planted(rows)
    before = peak_rss_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    found = benchmark.pedantic(lambda: search_pairs(embeds, THRESHOLD, index), rounds=1, iterations=1)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    recall = len(truth & set(found)) / len(truth)
    kind = index if index == "numpy" else ("faiss-flat" if rows <= FLAT_MAX else "faiss-ivf")
    benchmark.extra_info.update(rows=rows, index=kind, seconds=round(seconds, 2), cpu_s=round(cpu_seconds, 1),
                                rows_per_s=round(rows / seconds), peak_rss_growth_mb=round(peak_rss_mb() - before),
                                recall=round(recall, 4), pairs=len(found))  # fmt: skip
    print(f"\n{kind} over {rows} x {DIM}: {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU ({rows / seconds:,.0f} "
          f"rows/s), peak RSS +{peak_rss_mb() - before:.0f} MB, {len(found)} pairs, planted recall {recall:.4f}")
    assert recall == 1.0 if kind != "faiss-ivf" else recall >= 0.98  # IVF is approximate: it may miss a pair
