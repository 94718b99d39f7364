"""Measurement helpers shared by `mix bench` and the benchmarks: memory bandwidth and bytes per token."""

from __future__ import annotations

import time

import numpy as np


def read_bandwidth(nbytes: int = 1 << 30, repeats: int = 3) -> float:
    """Bytes/s of summing a float32 buffer larger than the caches with Paddle (all threads); best of repeats."""
    from ..runtime import import_paddle

    paddle = import_paddle()
    buffer = paddle.ones([nbytes // 4], dtype="float32")
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        float(buffer.sum())
        best = min(best, time.perf_counter() - start)
    return nbytes / best


def decode_bytes_per_token(language_model) -> int:
    """Weight bytes a decode step streams: every language-model tensor except the embedding table,
    which is read one row per token (unless it doubles as the output projection)."""
    embed = language_model.model.embed_tokens.weight
    tied = getattr(language_model.config, "tie_word_embeddings", False)
    total = 0
    for tensor in [*language_model.parameters(), *language_model.buffers()]:
        if tensor is embed and not tied:
            continue
        total += int(np.prod(tensor.shape)) * tensor.element_size()
    return total
