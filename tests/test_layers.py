"""Shared layers: CPU attention (the compiled kernel and the blocked NumPy path) against Paddle's fused
attention (the GPU path) and NumPy, with causal masks and grouped heads, and the decoder's last-position
shortcut against the full computation."""

from __future__ import annotations

import numpy as np
import pytest

from mixcli.runtime import import_paddle

paddle = import_paddle()

from mixcli import ext  # noqa: E402
from mixcli.layers import attention as attn  # noqa: E402
from mixcli.layers.attention import causal_mask  # noqa: E402


def numpy_attention(q, k, v, scale, mask):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat(group, axis=1), v.repeat(group, axis=1)
    scores = q @ k.transpose(0, 1, 3, 2) * scale + (0 if mask is None else mask)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ v


@pytest.fixture
def numpy_path(monkeypatch):
    """CPU attention without the compiled kernel: the blocked NumPy softmax."""
    monkeypatch.setenv("MIX_EXT", "0")


@pytest.fixture(params=["kernel", "numpy"])
def cpu_path(request, monkeypatch):
    """Each CPU attention path in turn: the compiled kernel (where built), then the NumPy softmax."""
    if request.param == "numpy":
        monkeypatch.setenv("MIX_EXT", "0")
    return request.param


@pytest.mark.parametrize("t, past, heads, kv_heads", [(1, 0, 4, 2), (14, 6, 6, 2), (33, 0, 5, 5), (300, 20, 4, 1)])
def test_causal_attention_with_grouped_heads(t, past, heads, kv_heads, cpu_path):
    rng = np.random.default_rng(t + heads)
    q = rng.standard_normal((1, heads, t, 16)).astype(np.float32)
    k, v = (rng.standard_normal((1, kv_heads, t + past, 16)).astype(np.float32) for _ in range(2))
    tensors = [paddle.to_tensor(x) for x in (q, k, v)]
    if cpu_path == "kernel" and not ext.attention_fits(*tensors, causal=True, token_major=False):
        pytest.skip("the compiled attention is not built here (needs a C++ compiler and Paddle's MKL)")
    ours = attn.attention(*tensors, 0.25, causal=True).numpy()
    expected = numpy_attention(q, k, v, 0.25, causal_mask(t, past, "float32").numpy())
    np.testing.assert_allclose(ours, expected, atol=2e-5)
    masked = attn.attention(*tensors, 0.25, causal_mask(t, past, "float32"))  # the same mask given as a tensor
    np.testing.assert_allclose(masked.numpy(), expected, atol=2e-5)


@pytest.mark.parametrize("t, past, heads", [(1, 0, 3), (14, 6, 2), (33, 0, 5)])
@pytest.mark.parametrize("masked", [False, True])
def test_blocked_attention_matches_fused_and_numpy(t, past, heads, masked, numpy_path, monkeypatch):
    monkeypatch.setattr(attn, "SCORE_BLOCK_BYTES", 2 * t * (t + past) * 4)  # force blocks of 2 heads
    rng = np.random.default_rng(t + past)
    q, k, v = (rng.standard_normal((1, heads, n, 8)).astype(np.float32) for n in (t, t + past, t + past))
    mask = causal_mask(t, past, "float32") if masked else None
    ours = attn.attention(*(paddle.to_tensor(x) for x in (q, k, v)), 8**-0.5, mask).numpy()
    fused = attn.fused_attention(*(paddle.to_tensor(x) for x in (q, k, v)), 8**-0.5, mask).numpy()
    expected = numpy_attention(q, k, v, 8**-0.5, None if mask is None else mask.numpy())
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    np.testing.assert_allclose(fused, expected, atol=1e-5)


@pytest.mark.parametrize("shift", [4.0, -4.0])  # exp of the raw scores overflows, or every score of a row underflows
def test_attention_recomputes_blocks_whose_exp_leaves_float32(shift, numpy_path):
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 4, 9, 8)).astype(np.float32) * 0.1 for _ in range(3))
    q[..., 0], k[..., 0] = 1.0, shift  # every score near 60 * shift
    mask = causal_mask(9, 0, "float32")
    ours = attn.attention(*(paddle.to_tensor(x) for x in (q, k, v)), 60.0, mask).numpy()
    expected = numpy_attention(q.astype(np.float64), k, v, 60.0, mask.numpy())
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_attention_stays_differentiable():
    """With a gradient to compute, the CPU path stays in Paddle ops (NumPy records no graph)."""
    rng = np.random.default_rng(2)
    q, k, v = (paddle.to_tensor(rng.standard_normal((1, 2, 5, 8)).astype(np.float32)) for _ in range(3))
    q.stop_gradient = False
    out = attn.attention(q, k, v, 8**-0.5, causal_mask(5, 0, "float32"))
    out.sum().backward()
    fused = attn.fused_attention(q.detach(), k, v, 8**-0.5, causal_mask(5, 0, "float32"))
    np.testing.assert_allclose(out.numpy(), fused.numpy(), atol=1e-5)
    assert q.grad is not None and np.abs(q.grad.numpy()).sum() > 0


@pytest.mark.parametrize("fused", [False, True])
def test_last_position_logits_skip_the_last_block_for_the_rest(fused, cpu_path):
    """forward() without all_logits runs the last block's attention and MLP for the last position only;
    its logits and every layer's cached keys and values equal the full computation's."""
    from mixcli.layers import for_inference
    from mixcli.layers.decoder import CausalLM, DecoderConfig

    paddle.seed(0)
    cfg = DecoderConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, qkv_bias=True)  # fmt: skip
    lm = for_inference(CausalLM(cfg))
    if fused:
        lm.fuse()
    embeds = paddle.randn([1, 7, 32])
    runs = []
    for all_logits in (True, False):
        cache = lm.make_cache(1, 16)
        lm(embeds[:, :3], cache, all_logits=True)  # a cached prefix, then a chunk of 4
        runs.append((lm(embeds[:, 3:], cache, all_logits=all_logits).numpy(), cache))
    (full, full_cache), (last, last_cache) = runs
    np.testing.assert_allclose(last, full[:, -1], rtol=1e-5, atol=1e-5)
    for a, b in zip(full_cache.keys + full_cache.values, last_cache.keys + last_cache.values):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert full_cache.offset == last_cache.offset == 7


@pytest.mark.parametrize("masked", [False, True])
def test_long_sequences_are_attended_in_blocks_of_rows(masked, numpy_path, monkeypatch):
    monkeypatch.setattr(attn, "SCORE_BLOCK_BYTES", 5 * 40 * 4)  # one head, 5 query rows at a time
    assert attn.rows_per_block(23, 40, 1, 4) == 5
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 3, n, 8)).astype(np.float32) for n in (23, 40, 40))
    mask = causal_mask(23, 17, "float32") if masked else None
    ours = attn.attention(*(paddle.to_tensor(x) for x in (q, k, v)), 8**-0.5, mask).numpy()
    expected = numpy_attention(q, k, v, 8**-0.5, None if mask is None else mask.numpy())
    np.testing.assert_allclose(ours, expected, atol=1e-5)
