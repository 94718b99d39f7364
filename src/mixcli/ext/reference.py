"""The plain-Paddle paths of the fused ops: the fallback, and the oracle the fused ops are tested against."""

from __future__ import annotations

import paddle
import paddle.nn.functional as F


def rms_norm(x: paddle.Tensor, weight: paddle.Tensor, eps: float) -> paddle.Tensor:
    """w * x / sqrt(mean(x^2) + eps) with the statistics in float32, cast back before the weight
    (Llama/Qwen2/InternLM2's RMSNorm)."""
    dtype = x.dtype
    x32 = x.astype("float32")
    variance = x32.square().mean(-1, keepdim=True)  # pow(2) is exact too, but 7x slower on Paddle's CPU
    return weight * (x32 * paddle.rsqrt(variance + eps)).astype(dtype)


def add_rms_norm(
    x: paddle.Tensor, residual: paddle.Tensor, weight: paddle.Tensor, eps: float
) -> tuple[paddle.Tensor, paddle.Tensor]:
    """(rms_norm(x + residual), x + residual): a pre-norm block's residual add and the next norm."""
    total = x + residual
    return rms_norm(total, weight, eps), total


def layer_norm(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor, eps: float) -> paddle.Tensor:
    """LayerNorm over the last axis (Paddle's own kernel)."""
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def rotate_half(x: paddle.Tensor) -> paddle.Tensor:
    """(-x2, x1) for the halves x1, x2 of the last axis."""
    half = x.shape[-1] // 2
    return paddle.concat([-x[..., half:], x[..., :half]], axis=-1)


def rotary(x: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor, token_major: bool = False) -> paddle.Tensor:
    """x * cos + rotate_half(x) * sin for x (B, S, T, D), or x (B, T, S, D) moved to (B, S, T, D) first
    when token_major; cos/sin (T, D)."""
    if token_major:
        x = x.transpose([0, 2, 1, 3]).contiguous()
    return x * cos + rotate_half(x) * sin


def rotary_tables(
    positions: paddle.Tensor, inv_freq: paddle.Tensor, section: list[int]
) -> tuple[paddle.Tensor, paddle.Tensor]:
    """cos, sin (T, D) for float32 positions (P, T): frequency chunk i of `section` takes its angle from
    component i % P (Qwen2-VL's M-RoPE for P = 3, recomposition_frequencies)."""
    freqs = positions.unsqueeze(-1) * inv_freq  # (P, T, D/2)
    chunks = paddle.split(freqs, section, axis=-1)
    p = positions.shape[0]
    freqs = paddle.concat([chunk[i % p] for i, chunk in enumerate(chunks)], axis=-1)  # (T, D/2)
    emb = paddle.concat([freqs, freqs], axis=-1)
    return emb.cos(), emb.sin()


def swiglu(gate: paddle.Tensor, up: paddle.Tensor | None = None) -> paddle.Tensor:
    """silu(gate) * up; with one tensor, its last axis holds gate then up."""
    if up is None:
        gate, up = paddle.chunk(gate, 2, axis=-1)
    return F.silu(gate) * up


def quick_gelu(x: paddle.Tensor) -> paddle.Tensor:
    """x * sigmoid(1.702 x) (CLIP's and Qwen2-VL's vision activation)."""
    return x * F.sigmoid(1.702 * x)


def attention(
    q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, scale: float, causal: bool = False, token_major: bool = False
) -> paddle.Tensor:
    """softmax(q k^T * scale) v for q (B, H, T, D) and k, v (B, Hkv, S, D), each key/value head serving
    H / Hkv query heads (transformers' repeat_kv); causal: query i sees keys 0 .. i + S - T. With
    token_major, axes 1 and 2 are swapped in the inputs and the output."""
    if token_major:
        q, k, v = (x.transpose([0, 2, 1, 3]) for x in (q, k, v))
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = (x.repeat_interleave(group, axis=1) for x in (k, v))
    scores = paddle.matmul(q, k, transpose_y=True) * scale
    if causal:
        t, s = scores.shape[-2:]
        seen = paddle.tril(paddle.ones([t, s], dtype="bool"), diagonal=s - t)
        scores = paddle.where(seen, scores, paddle.full([], float("-inf"), scores.dtype))
    out = paddle.matmul(F.softmax(scores, axis=-1), v)
    return out.transpose([0, 2, 1, 3]) if token_major else out


def wint8_dequant(w: paddle.Tensor, scale: paddle.Tensor) -> paddle.Tensor:
    """The float32 weights (n, k) of int8 weights (n, k) and their per-row scales (n)."""
    return w.astype("float32") * scale.unsqueeze(-1)


def wint8_matmul(x: paddle.Tensor, w: paddle.Tensor, scale: paddle.Tensor) -> paddle.Tensor:
    """x (.., k) @ (w * scale)^T for int8 weights w (n, k) and per-output-channel scales (n)."""
    return paddle.matmul(x, wint8_dequant(w, scale).astype(x.dtype), transpose_y=True)
