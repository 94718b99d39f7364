"""Attention over a whole sequence, the one entry point for the VLMs, the text encoders and the UNet: the
compiled CPU kernel, a NumPy path that goes a block of heads and query rows at a time so the scores stay
in cache, and Paddle's scaled-dot-product attention (fused kernels on GPU), the plain path and the oracle."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F

from .. import ext
from . import cpu
from .cpu import host, in_parallel, is_cpu

# Score blocks up to this size stay in this CPU's cache; measured for 16 heads x 1025 tokens:
# 2 heads at a time (8 MiB of scores) ran the softmax 2.3x faster than all 16 at once.
SCORE_BLOCK_BYTES = 8 << 20


def heads_per_block(t: int, s: int, heads: int, itemsize: int) -> int:
    """Heads per block of scores: as many as fit SCORE_BLOCK_BYTES with all t query rows (at least one)."""
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


def window_mask(t: int, s: int, window: int, dtype) -> paddle.Tensor:
    """(T, S) additive band for the last T queries against S keys (the last query at the last key): query
    i sees no key more than window - 1 positions before its own (transformers' sliding_window_overlay)."""
    query = np.arange(s - t, s)[:, None]
    allowed = np.arange(s)[None] > query - window
    return paddle.to_tensor(np.where(allowed, np.float32(0), np.float32(-np.inf))).astype(dtype)


def attention(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, scale: float, mask=None, causal: bool = False,
              token_major: bool = False) -> paddle.Tensor:  # fmt: skip
    """softmax(q k^T * scale + mask) v for (B, H, T, D) queries against (B, Hkv, S, D) keys and values, or
    (B, T, H, D) against (B, S, Hkv, D) when token_major (the output in q's layout); key/value head j
    serves query heads j*G .. j*G+G-1 (G = H / Hkv, transformers' repeat_kv). The mask is additive,
    (T, S) with grouped heads; causal: query i also sees only keys 0 .. i + S - T.

    CPU float32 tensors without gradients (layers.cpu.on_cpu, the one switch for the host paths) go to the
    compiled kernel (ext.attention, when built and without a mask) or the blocked NumPy softmax; the rest
    to Paddle's attention (paddle_attention), which the tests hold the others to."""
    if cpu.on_cpu(q):
        if mask is None and ext.attention_fits(q, k, v, causal, token_major):
            return ext.attention(q, k, v, scale, causal, token_major)
        return host_attention(q, k, v, scale, mask, causal, token_major)
    return paddle_attention(q, k, v, scale, mask, causal, token_major)


# --- the NumPy path -------------------------------------------------------------------------------


def host_attention(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, scale: float, mask=None,
                   causal: bool = False, token_major: bool = False) -> paddle.Tensor:  # fmt: skip
    """attention() for float32 CPU tensors in NumPy blocks: per sample, heads_per_block heads and
    rows_per_block query rows at a time, each block copied out of the layout it is in (no full-size
    transposes) and written into the output in place."""
    if token_major and q.shape[2] != k.shape[2]:  # folding grouped heads needs head-major queries
        swap = [0, 2, 1, 3]
        out = host_attention(*(cpu.permute(x, swap) for x in (q, k, v)), scale, mask, causal)
        return cpu.permute(out, swap)
    out = np.empty(q.shape, np.float32)
    qn, kn, vn, outn = host(q), host(k), host(v), out
    if token_major:
        qn, kn, vn, outn = (x.transpose(0, 2, 1, 3) for x in (qn, kn, vn, outn))  # (B, H, T, D) views
    b, h, t, d = qn.shape
    hkv, s = kn.shape[1], kn.shape[2]
    group = h // hkv
    if group > 1:  # the group's query heads side by side on the query axis: views, in head-major layout
        qn, outn = qn.reshape(b, hkv, group * t, d), outn.reshape(b, hkv, group * t, d)
    mask = _host_mask(mask, causal, t, s, group)
    step = heads_per_block(group * t, s, hkv, 4)
    rows = rows_per_block(group * t, s, step, 4)
    for i in range(b):
        for first in range(0, hkv, step):
            heads = slice(first, first + step)
            kh, vh = _block(kn[i, heads] * np.float32(scale)), _block(vn[i, heads])  # (G, S, D)
            for row in range(0, group * t, rows):
                part = slice(row, row + rows)
                masked = None if mask is None else _block(_mask_rows(mask, i, heads, part))
                softmax_product(_block(qn[i, heads, part]), kh, vh, masked, out=outn[i, heads, part])
    return paddle.from_dlpack(out)


def _host_mask(mask, causal: bool, t: int, s: int, group: int) -> np.ndarray | None:
    """The additive mask as a NumPy array: (G*T, S) for grouped heads (a (T, S) mask tiled), else (T, S)
    or (B|1, H|1, T, S); the causal triangle added."""
    if causal and t > 1:  # a single query sees every key
        triangle = np.where(np.tri(t, s, s - t, dtype=bool), np.float32(0), np.float32(-np.inf))
        mask = triangle if mask is None else host(mask) + triangle
    elif mask is not None:
        mask = host(mask)
    if mask is None or group == 1:
        return mask
    return np.tile(mask, (group, 1))


def _mask_rows(mask: np.ndarray, i: int, heads: slice, rows: slice) -> np.ndarray:
    """The mask of sample i's block of heads and query rows."""
    if mask.ndim == 2:
        return mask[rows]
    per_head = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    return per_head[min(i, per_head.shape[0] - 1), heads if per_head.shape[1] > 1 else slice(None), rows]


def _block(x: np.ndarray) -> paddle.Tensor:
    """A contiguous tensor of a block (a view where it already is contiguous)."""
    return paddle.from_dlpack(np.ascontiguousarray(x))


def softmax_product(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, mask=None, out=None) -> np.ndarray:
    """softmax(q k^T + mask) v for float32 CPU tensors q (..., T, D), k and v (..., S, D), q or k already scaled.

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


# --- Paddle's path ----------------------------------------------------------------------------------


def paddle_attention(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, scale: float, mask=None,
                     causal: bool = False, token_major: bool = False) -> paddle.Tensor:  # fmt: skip
    """attention() in Paddle's ops: scaled-dot-product attention off the CPU, softmax blocks of
    heads_per_block heads on it (where gradients flow or the dtype is not float32)."""
    if token_major:
        if not is_cpu(q) and q.shape[2] == k.shape[2]:  # the fused kernels' own layout
            mask = _with_causal(mask, causal, q.shape[1], k.shape[1], q.dtype)
            return fused_attention(q, k, v, scale, mask, token_major=True)
        swap = [0, 2, 1, 3]  # spelled out, not recursive: the static-graph tracer loses globals in recursion
        return _head_major(q.transpose(swap), k.transpose(swap), v.transpose(swap), scale, mask, causal).transpose(swap)
    return _head_major(q, k, v, scale, mask, causal)


def _head_major(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, scale: float, mask, causal: bool) -> paddle.Tensor:
    b, h, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    mask = _with_causal(mask, causal, t, s, q.dtype)
    if h == hkv:
        return _paddle_blocks(q, k, v, scale, mask)
    group = h // hkv  # the group's query heads folded into the query axis, so k and v are not copied
    grouped = q.reshape([b, hkv, group * t, d])
    out = _paddle_blocks(grouped, k, v, scale, None if mask is None else paddle.tile(mask, [group, 1]))
    return out.reshape([b, h, t, d])


def _with_causal(mask, causal: bool, t: int, s: int, dtype):
    if not causal or t == 1:  # a single query sees every key
        return mask
    triangle = causal_mask(t, s - t, dtype)
    return triangle if mask is None else mask + triangle


def _paddle_blocks(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, scale: float, mask) -> paddle.Tensor:
    if not is_cpu(q):
        return fused_attention(q, k, v, scale, mask)
    step = heads_per_block(q.shape[2], k.shape[2], q.shape[1], q.element_size())
    q = q * scale
    blocks = []
    for start in range(0, q.shape[1], step):
        scores = _scores(q[:, start : start + step], k[:, start : start + step], mask)
        probs = F.softmax(scores.astype("float32"), axis=-1).astype(q.dtype)
        blocks.append(paddle.matmul(probs, v[:, start : start + step]))
    return blocks[0] if len(blocks) == 1 else paddle.concat(blocks, axis=1)


def fused_attention(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, scale: float, mask=None,
                    token_major: bool = False) -> paddle.Tensor:  # fmt: skip
    """Paddle's scaled-dot-product attention, (B, H, T, D) or token_major (B, T, H, D), its own layout:
    flash / memory-efficient kernels on GPU, a plain composite elsewhere (what paddle.compat's
    head-major version calls after swapping the axes)."""
    if not token_major:
        return fused_attention(*(x.swapaxes(1, 2) for x in (q, k, v)), scale, mask, token_major=True).swapaxes(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=False)
