"""The NumPy decode step (layers/fastdecode.py) over several generations on one loaded model: each
generation's cache is its own, even when a new cache object lands at a freed one's address."""

from __future__ import annotations

import numpy as np
import pytest

from mixcli.runtime import import_paddle

paddle = import_paddle()

from mixcli.layers import fastdecode, for_inference  # noqa: E402
from mixcli.layers.decoder import CausalLM, DecoderConfig  # noqa: E402


@pytest.fixture
def lm():
    paddle.seed(3)
    cfg = DecoderConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, qkv_bias=True)  # fmt: skip
    model = for_inference(CausalLM(cfg))
    model.fuse()
    return model


def decode(lm, prompt: paddle.Tensor, tokens: list[int]) -> np.ndarray:
    """Logits of a prompt and of each token fed after it, against a fresh cache."""
    cache = lm.make_cache(1, prompt.shape[1] + len(tokens))
    out = [lm(prompt, cache).numpy()]
    for token in tokens:
        out.append(lm(lm.embed(paddle.to_tensor([[token]], dtype="int64")), cache).numpy())
    return np.concatenate(out)


def test_a_new_cache_at_a_dead_caches_address_is_decoded_against_its_own_keys(lm, monkeypatch):
    """Regression: the decoder kept the cache's views keyed by id(cache); CPython hands a freed
    object's address to the next one, so a second request decoded against the first one's keys.
    Every id() the module takes is forced equal here, which makes that collision certain."""
    monkeypatch.setattr(fastdecode, "id", lambda obj: 1, raising=False)
    first, second = paddle.randn([1, 5, 32]), paddle.randn([1, 3, 32])
    assert lm.fast_decoder() is not None
    decode(lm, first, [7, 8, 9])
    fast = decode(lm, second, [4, 5, 6])
    monkeypatch.setenv("MIX_FAST_DECODE", "0")
    assert lm.fast_decoder() is None
    expected = decode(lm, second, [4, 5, 6])
    np.testing.assert_allclose(fast, expected, atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_interleaved_generations_keep_their_own_caches(lm, monkeypatch):
    """Two live requests stepped in turn (as a server does) each see only their own keys."""
    a, b = (lm.make_cache(1, 8) for _ in range(2))
    prompts = paddle.randn([1, 4, 32]), paddle.randn([1, 2, 32])
    lm(prompts[0], a), lm(prompts[1], b)
    steps = {id(a): [], id(b): []}
    for token in (3, 11, 17):
        for cache in (a, b):
            steps[id(cache)].append(lm(lm.embed(paddle.to_tensor([[token]], dtype="int64")), cache).numpy())
    monkeypatch.setenv("MIX_FAST_DECODE", "0")
    for prompt, cache in zip(prompts, (a, b)):
        expected = decode(lm, prompt, [3, 11, 17])[1:]
        np.testing.assert_allclose(np.concatenate(steps[id(cache)]), expected, atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_cache_views_share_the_buffers(lm):
    cache = lm.make_cache(1, 4)
    keys, values = cache.host_views()
    assert cache.host_views()[0] is keys
    lm(paddle.randn([1, 2, 32]), cache)
    np.testing.assert_array_equal(keys[0], cache.keys[0].numpy())
    np.testing.assert_array_equal(values[1], cache.values[1].numpy())
    assert np.abs(keys[0][:, :, :2]).sum() > 0
