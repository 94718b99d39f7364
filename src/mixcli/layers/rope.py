"""Rotary position embeddings (the rotate-half convention of Llama/Qwen2/InternLM2), applied with the
fused op of ``mixcli.ext`` when compiled."""

from __future__ import annotations

import numpy as np
import paddle
from paddle import nn

from .. import ext


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
        cos, sin = ext.rotary_tables(pos, self.inv_freq, section)
        return cos.astype(dtype), sin.astype(dtype)


def apply_rotary(x: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor, token_major: bool = False) -> paddle.Tensor:
    """x: (B, H, T, D), or (B, T, H, D) when token_major (returned as (B, H, T, D)); cos/sin: (T, D)."""
    return ext.rotary(x, cos, sin, token_major)
