"""Attention over a whole sequence: the compiled CPU kernel, Paddle's fused attention elsewhere, and a
NumPy path that goes a few heads at a time so the scores stay in cache."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F

from .. import ext
from .cpu import host, in_parallel, on_cpu

# Score blocks up to this size stay in this CPU's cache; measured for 16 heads x 1025 tokens:
# 2 heads at a time (8 MiB of scores) ran the softmax 2.3x faster than all 16 at once.
SCORE_BLOCK_BYTES = 8 << 20


def heads_per_block(t: int, s: int, heads: int, itemsize: int) -> int:
    per_head = max(1, t * s * itemsize)
    return max(1, min(heads, SCORE_BLOCK_BYTES // per_head))


def rows_per_block(t: int, s: int, heads: int, itemsize: int) -> int:
    """Query rows per block of `heads` heads: all of them unless their scores pass SCORE_BLOCK_BYTES
    (long sequences: a 10,000-patch image's scores are 400 MB a head, passed over three times)."""
    return max(1, min(t, SCORE_BLOCK_BYTES // max(1, s * itemsize * heads)))


def causal_mask(t: int, past: int, dtype) -> paddle.Tensor:
    """(T, past+T) additive mask: query i sees keys 0 .. past+i."""
    allowed = paddle.tril(paddle.ones([t, past + t], dtype="bool"), diagonal=past)
    return paddle.where(allowed, paddle.zeros([], dtype), paddle.full([], float("-inf"), dtype))


def attention(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, scale: float, mask=None, causal: bool = False):
    """softmax(q k^T * scale + mask) v for (B, H, T, D) queries against (B, Hkv, S, D) keys and values,
    key/value head j serving query heads j*G .. j*G+G-1 (G = H / Hkv, transformers' repeat_kv); a mask
    with grouped heads is (T, S). causal: query i also sees only keys 0 .. i + S - T.

    On the CPU without a mask, the compiled kernel (ext.attention) when built; else Paddle's
    scaled-dot-product attention off the CPU, or the blocked NumPy softmax below."""
    if mask is None and ext.attention_fits(q, k, v, causal, token_major=False):
        return ext.attention(q, k, v, scale, causal)
    b, h, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    if causal and t > 1:  # a single query sees every key
        triangle = causal_mask(t, s - t, q.dtype)
        mask = triangle if mask is None else mask + triangle
    if h == hkv:
        return _attention(q, k, v, scale, mask)
    group = h // hkv  # the group's query heads folded into the query axis, so k and v are not copied
    grouped = q.reshape([b, hkv, group * t, d])
    out = _attention(grouped, k, v, scale, None if mask is None else paddle.tile(mask, [group, 1]))
    return out.reshape([b, h, t, d])


def _attention(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, scale: float, mask) -> paddle.Tensor:
    if not q.place.is_cpu_place():
        return fused_attention(q, k, v, scale, mask)
    b, h, t, d = q.shape
    step = heads_per_block(t, k.shape[2], h, q.element_size())
    q = q * scale
    if on_cpu(q):
        out = np.empty((b, h, t, d), np.float32)
        rows = rows_per_block(t, k.shape[2], step, 4)
        for start in range(0, h, step):
            heads = slice(start, start + step)
            kh, vh = k[:, heads], v[:, heads]
            for first in range(0, t, rows):
                part = slice(first, first + rows)
                qh = q[:, heads] if rows == t else q[:, heads, part]
                masked = mask if mask is None or rows == t else mask[..., part, :]
                softmax_product(qh, kh, vh, masked, out=out[:, heads, part])
        return paddle.from_dlpack(out)
    blocks = []
    for start in range(0, h, step):
        scores = _scores(q[:, start : start + step], k[:, start : start + step], mask)
        probs = F.softmax(scores.astype("float32"), axis=-1).astype(q.dtype)
        blocks.append(paddle.matmul(probs, v[:, start : start + step]))
    return blocks[0] if len(blocks) == 1 else paddle.concat(blocks, axis=1)


def softmax_product(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, mask=None, out=None) -> np.ndarray:
    """softmax(q k^T + mask) v for float32 CPU tensors: q (..., T, D) already scaled, k and v (..., S, D).

    The row maximum is not subtracted: exp of the raw scores, normalised after the product with v,
    equals the softmax unless exp overflows or every score of a row underflows, which the row sums
    reveal; such a block is recomputed the usual way. NumPy's exp over the scores' memory, on all the
    math threads, runs ~3x faster than Paddle's softmax here."""
    scores = _scores(q, k, mask)
    probs = host(scores)
    total = np.empty((*probs.shape[:-1], 1), np.float32)
    in_parallel(_exp_sum, probs, total)
    if not (1e-30 < total.min() and total.max() < np.inf):
        scores = _scores(q, k, mask)
        probs = host(scores)
        probs -= probs.max(-1, keepdims=True)
        np.exp(probs, out=probs)
        total = probs.sum(-1, keepdims=True)
    return np.divide(host(paddle.matmul(scores, v)), total, out=out)


def _scores(q: paddle.Tensor, k: paddle.Tensor, mask) -> paddle.Tensor:
    scores = paddle.matmul(q, k, transpose_y=True)
    return scores if mask is None else scores + mask


def _exp_sum(x: np.ndarray, total: np.ndarray) -> None:
    """exp in place, and the row sums into ``total``."""
    with np.errstate(over="ignore", under="ignore"):
        np.exp(x, out=x)
    np.sum(x, axis=-1, keepdims=True, out=total)


def fused_attention(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, scale: float, mask=None) -> paddle.Tensor:
    """Paddle's scaled-dot-product attention in (B, H, T, D) layout: flash / memory-efficient
    kernels on GPU, a plain composite elsewhere."""
    from paddle.compat.nn.functional import scaled_dot_product_attention

    return scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
