"""Batched decoding: one step for several sequences, each with its own KV cache and position, in one
pass over the language model's weights.

Decoding on the CPU is bound by reading the weights (DESIGN.md), so the B rows of a (B, K) x (K, N)
product cost about what one row does; attention, which reads each sequence's own cache, runs per
sequence. This is the batched form of layers/fastdecode.py's NumPy step, on the same views of the
Paddle model's memory; the Paddle path (one model.forward per sequence) stays the oracle and is what
runs where that step does not (MIX_FAST_DECODE=0, GPU, bf16).
"""

from __future__ import annotations

import numpy as np
import paddle

from ..layers.fastdecode import LayerViews, NumpyDecoder, softmax, view


def rms_rows(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm of each row of (B, H)."""
    return weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def rotate_rows(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half rotary embedding of (B, heads, D) with each row's own (B, 1, D) angles."""
    half = x.shape[-1] // 2
    return x * cos + np.concatenate([-x[..., half:], x[..., :half]], axis=-1) * sin


class BatchedDecoder:
    """Decode steps for many sequences of one vision-language model (a models.base.VisionLanguageModel
    whose language model takes the NumPy step: fused, float32, CPU)."""

    def __init__(self, model, fast: NumpyDecoder):
        self.model, self.fast = model, fast

    @classmethod
    def for_model(cls, model) -> "BatchedDecoder | None":
        """The batched step for ``model``, or None where only the Paddle path runs."""
        lm = getattr(model, "language_model", None)
        fast = lm.fast_decoder() if lm is not None and hasattr(lm, "fast_decoder") else None
        return None if fast is None else cls(model, fast)

    def step(self, tokens: list[int], caches: list) -> np.ndarray:
        """Logits (B, V) of each sequence's next token ``tokens[b]``, appended to ``caches[b]``."""
        for cache in caches:
            if cache.offset >= cache.max_len:
                raise ValueError(f"KV cache holds {cache.max_len} tokens; {cache.offset + 1} requested")
        x = view(self.model.embed_tokens(tokens))[0].copy()  # (B, H)
        cos, sin = self._angles(caches)
        for i, weights in enumerate(self.fast.layers):
            x = self._layer(x, weights, i, caches, cos, sin)
        for cache in caches:
            cache.advance(1)
        return rms_rows(x, self.fast.final_norm, self.fast.eps) @ self.fast.head

    def _angles(self, caches: list) -> tuple[np.ndarray, np.ndarray]:
        """Rotary cos, sin (B, 1, D) at each sequence's position (Qwen2-VL's M-RoPE delta included)."""
        pairs = [self.fast.rotary(self.model.decode_position(c), 1, paddle.float32) for c in caches]
        cos = np.stack([view(c)[0] for c, _ in pairs])[:, None]
        sin = np.stack([view(s)[0] for _, s in pairs])[:, None]
        return cos, sin

    def _layer(self, x: np.ndarray, w: LayerViews, layer: int, caches: list, cos, sin) -> np.ndarray:
        f = self.fast
        h, hkv, d = f.h, f.hkv, f.d
        qkv = rms_rows(x, w.input_norm, f.eps) @ w.qkv  # (B, (H + 2 Hkv) D)
        if w.qkv_bias is not None:
            qkv += w.qkv_bias
        qk = rotate_rows(qkv[:, : (h + hkv) * d].reshape(len(x), h + hkv, d), cos, sin)
        v = qkv[:, (h + hkv) * d :].reshape(len(x), hkv, d)
        attended = np.stack([self._attend(qk[b], v[b], cache, layer) for b, cache in enumerate(caches)])
        x = x + attended @ w.o
        gate_up = rms_rows(x, w.post_norm, f.eps) @ w.gate_up
        n = w.down.shape[0]
        gate, up = gate_up[:, :n], gate_up[:, n:]
        return x + (gate / (1.0 + np.exp(-gate)) * up) @ w.down

    def _attend(self, qk: np.ndarray, v: np.ndarray, cache, layer: int) -> np.ndarray:
        """One sequence's attention over its own cache, after storing this token's key and value."""
        h, hkv, d = self.fast.h, self.fast.hkv, self.fast.d
        keys, values = (views[layer][0] for views in cache.host_views())  # (Hkv, S, D)
        pos = cache.offset
        keys[:, pos], values[:, pos] = qk[h:], v
        q = qk[:h].reshape(hkv, h // hkv, d)  # query head j uses key head j // G
        seen = slice(self.fast.first_key(pos), pos + 1)
        scores = q @ keys[:, seen].transpose(0, 2, 1) * d**-0.5  # (Hkv, G, S)
        return (softmax(scores) @ values[:, seen]).reshape(h * d)
