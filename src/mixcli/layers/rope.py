"""Rotary position embeddings (the rotate-half convention of Llama/Qwen2/InternLM2)."""

from __future__ import annotations

import numpy as np
import paddle
from paddle import nn


class RotaryEmbedding(nn.Layer):
    """cos/sin tables for positions, grown on demand, computed in float32."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        exponent = paddle.arange(0, head_dim, 2, dtype="float32") / head_dim
        self.inv_freq = 1.0 / (theta**exponent)
        self._cos = self._sin = None

    def _grow(self, length: int) -> None:
        t = paddle.arange(length, dtype="float32")
        freqs = paddle.outer(t, self.inv_freq)
        emb = paddle.concat([freqs, freqs], axis=-1)  # (L, D)
        self._cos, self._sin = emb.cos(), emb.sin()

    def forward(self, start: int, length: int, dtype) -> tuple[paddle.Tensor, paddle.Tensor]:
        """cos, sin of shape (length, D) for positions start .. start+length-1."""
        end = start + length
        if self._cos is None or self._cos.shape[0] < end:
            self._grow(max(end, 2 * (self._cos.shape[0] if self._cos is not None else 256)))
        return self._cos[start:end].astype(dtype), self._sin[start:end].astype(dtype)

    def multimodal(self, positions: np.ndarray, section: list[int], dtype) -> tuple[paddle.Tensor, paddle.Tensor]:
        """cos, sin (T, D) for 3-D (temporal, height, width) positions (3, T): frequency chunk i of
        `section` takes its angle from component i % 3 (Qwen2-VL's M-RoPE, recomposition_frequencies)."""
        pos = paddle.to_tensor(np.asarray(positions, dtype=np.float32))  # (3, T)
        freqs = pos.unsqueeze(-1) * self.inv_freq  # (3, T, D/2)
        chunks = paddle.split(freqs, section, axis=-1)
        freqs = paddle.concat([chunk[i % 3] for i, chunk in enumerate(chunks)], axis=-1)  # (T, D/2)
        emb = paddle.concat([freqs, freqs], axis=-1)
        return emb.cos().astype(dtype), emb.sin().astype(dtype)


def rotate_half(x: paddle.Tensor) -> paddle.Tensor:
    half = x.shape[-1] // 2
    return paddle.concat([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor) -> paddle.Tensor:
    """x: (B, H, T, D); cos/sin: (T, D)."""
    return x * cos + rotate_half(x) * sin
