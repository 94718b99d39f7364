"""Measurement helpers shared by `mix bench` and the benchmarks: memory bandwidth and bytes per token."""

from __future__ import annotations

import time

import numpy as np


def read_bandwidth(nbytes: int = 1 << 30, repeats: int = 3) -> float:
    """Bytes/s of summing a float32 buffer larger than the caches on all the math threads; best of repeats.
    (Paddle's sum reads with one thread: 26 GB/s here, where two threads read 35 GB/s.) Runs in the
    runtime mix configures, as a decode step does."""
    from ..layers.cpu import in_parallel
    from ..runtime import import_paddle

    import_paddle()
    buffer = np.ones(nbytes // 4, dtype=np.float32)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        in_parallel(np.sum, buffer)
        best = min(best, time.perf_counter() - start)
    return nbytes / best


def decode_bytes_per_token(language_model) -> int:
    """Weight bytes a decode step streams: every language-model tensor except the embedding table,
    which is read one row per token (unless it doubles as the output projection, and that is not an int8
    copy of it: --quantize wint8)."""
    embed = language_model.model.embed_tokens.weight
    tied = getattr(language_model.config, "tie_word_embeddings", False)
    tied = tied and not hasattr(getattr(language_model, "tied_head", None), "weight_scale")
    total = 0
    for tensor in [*language_model.parameters(), *language_model.buffers()]:
        if tensor is embed and not tied:
            continue
        total += int(np.prod(tensor.shape)) * tensor.element_size()
    return total


def read_bandwidth_in_child(nbytes: int = 1 << 30) -> float:
    """read_bandwidth in a fresh process: measured before models fill the memory (it reads low under
    memory pressure), and neither the probe buffer nor Paddle's allocator count towards this process's memory."""
    import subprocess
    import sys

    probe = f"from mixcli.bench import read_bandwidth; print(read_bandwidth({int(nbytes)}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


def median_of(fn, rounds: int = 3) -> float:
    """Median of fn() over rounds, after one warm-up call."""
    import statistics

    fn()
    return statistics.median(fn() for _ in range(rounds))


def decode_report(mine: float, theirs: float, bytes_per_token: int, bandwidth: float) -> dict:
    """Decode tokens/s of mix and the reference, their ratio, and each one's share of the bandwidth bound."""
    bound = bandwidth / bytes_per_token
    return {
        "mix_tokens_per_s": round(mine, 2),
        "transformers_tokens_per_s": round(theirs, 2),
        "speedup": round(mine / theirs, 2),
        "weight_gb_per_token": round(bytes_per_token / 1e9, 3),
        "read_bandwidth_gb_s": round(bandwidth / 1e9, 1),
        "bound_tokens_per_s": round(bound, 2),
        "mix_share_of_bound": round(mine / bound, 3),
        "transformers_share_of_bound": round(theirs / bound, 3),
    }
