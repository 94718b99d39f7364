"""Mistral's sliding window in the shared decoder, against transformers' MistralModel (eager attention, which
applies sliding_window_overlay): a tiny LLaVA-NeXT-Mistral checkpoint whose window is shorter than its prompt."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import paddle
import pytest

from helpers import assert_clear_margins, picture
from llava_ref import TinyLlava, reference_greedy, reference_inputs, reference_logits, reference_model
from llava_ref import reference_processor, write_checkpoint
from mixcli.generation import SamplingConfig, generate
from mixcli.models import load_model
from vlm_checks import assert_fast_decode_matches_paddle

WINDOW = 12
NEXT_MISTRAL = TinyLlava(model_type="llava_next", text_type="mistral", sliding_window=WINDOW)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = write_checkpoint(tmp_path_factory.mktemp("next-window"), NEXT_MISTRAL, seed=5)
    return path, load_model(path), reference_model(path), reference_processor(path)


def user(image, text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


def prompt_logits(model, prompt) -> np.ndarray:
    cache = model.make_cache(len(prompt.ids) + 1)
    return model.net.language_model(model.embed_prompt(prompt), cache, all_logits=True).numpy()[0]


def test_the_reference_applies_the_window(checkpoint, tmp_path):
    """The same weights without a window give other logits: the window is in force in transformers."""
    path, _, ref, processor = checkpoint
    inputs = reference_inputs(processor, user(picture(100, 60, 1), "Describe the image in detail."))
    assert inputs["input_ids"].shape[1] > 4 * WINDOW
    windowed = reference_logits(ref, inputs)
    unwindowed = reference_logits(reference_model_without_window(path, tmp_path), inputs)
    assert np.abs(windowed - unwindowed)[WINDOW:].max() > 1e-2
    np.testing.assert_array_equal(windowed[:WINDOW], unwindowed[:WINDOW])


def reference_model_without_window(path, tmp_path):
    """transformers' model of a copy of the checkpoint whose text_config has sliding_window null."""
    import json
    import shutil

    copy = tmp_path / "no-window"
    shutil.copytree(path, copy)
    config = json.loads((copy / "config.json").read_text())
    config["text_config"]["sliding_window"] = None
    (copy / "config.json").write_text(json.dumps(config))
    return reference_model(copy)


@pytest.mark.parametrize("size", [(100, 60), (33, 200)])
def test_prefill_logits_match_the_reference(checkpoint, size):
    _, model, ref, processor = checkpoint
    assert model.config.text.window == WINDOW
    image = picture(*size, seed=2)
    prompt = model.prepare([("Describe the image in detail.", None)], [image])
    inputs = reference_inputs(processor, user(image, "Describe the image in detail."))
    assert prompt.ids == inputs["input_ids"][0].tolist()
    ours, theirs = prompt_logits(model, prompt), reference_logits(ref, inputs)
    assert np.abs(ours - theirs).max() <= 1e-4 * max(1.0, float(np.abs(theirs).max()))


def test_greedy_decoding_past_the_window_matches_the_reference(checkpoint):
    """Prefill, then decode steps (the NumPy step on CPU) that each see only the last WINDOW positions."""
    _, model, ref, processor = checkpoint
    image = picture(301, 97, seed=4)
    prompt = model.prepare([("What is in the picture?", None)], [image])
    inputs = reference_inputs(processor, user(image, "What is in the picture?"))
    eos = model.stop_token_ids[0]
    theirs, steps = reference_greedy(ref, inputs, 12, eos)
    assert_clear_margins(steps)
    ours = generate(model, prompt, prompt.ids, SamplingConfig(max_new_tokens=12, stop_token_ids=model.stop_token_ids))
    assert ours.token_ids == [t for t in theirs if t != eos]


def test_fast_decode_matches_the_paddle_path(checkpoint, monkeypatch):
    _, model, _, _ = checkpoint
    prompt = model.prepare([("What is in the picture?", None)], [picture(60, 40)])
    assert_fast_decode_matches_paddle(model, prompt, monkeypatch)


def test_cached_chunks_match_the_whole_prompt(checkpoint):
    """A prompt run in pieces against the cache (later pieces longer than one token) gives the same
    logits as the whole prompt at once: the band mask counts positions from the cache's start."""
    _, model, _, _ = checkpoint
    prompt = model.prepare([("Describe the image in detail.", None)], [picture(70, 50, 3)])
    whole = prompt_logits(model, prompt)
    embeds = model.embed_prompt(prompt)
    cache = model.make_cache(len(prompt.ids))
    lm, pieces, start = model.net.language_model, [], 0
    for end in (20, 25, 40, len(prompt.ids)):
        pieces.append(lm(embeds[:, start:end], cache, all_logits=True).numpy()[0])
        start = end
    np.testing.assert_allclose(np.concatenate(pieces), whole, atol=1e-5 * max(1.0, np.abs(whole).max()))


@pytest.mark.parametrize("t, s", [(5, 9), (9, 9), (1, 9), (3, 20)])
def test_window_mask_on_both_attention_paths(t, s):
    """attention() with window_mask and causal, host (NumPy) and Paddle paths, against softmax by hand."""
    from mixcli.layers.attention import host_attention, paddle_attention, window_mask

    rng = np.random.default_rng(t * s)
    q, k, v = (rng.standard_normal(shape).astype(np.float32) for shape in ((1, 4, t, 8), (1, 2, s, 8), (1, 2, s, 8)))
    window = 3
    query = np.arange(s - t, s)[:, None]
    keys = np.arange(s)[None]
    allowed = (keys <= query) & (keys > query - window)
    kk, vv = np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1)
    scores = np.where(allowed, q @ kk.transpose(0, 1, 3, 2) * 8**-0.5, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    expected = (probs / probs.sum(-1, keepdims=True)) @ vv
    mask = window_mask(t, s, window, paddle.float32)
    for path in (host_attention, paddle_attention):
        out = path(*(paddle.to_tensor(x) for x in (q, k, v)), 8**-0.5, mask, True).numpy()
        np.testing.assert_allclose(out, expected, atol=1e-5)


def test_other_families_keep_full_attention():
    """Only a LLaVA Mistral text_config sets the window; Qwen2's unused sliding_window stays unused."""
    from mixcli.models.llava.config import text_config

    assert text_config({"model_type": "qwen2", "sliding_window": 4}, False).window is None
    assert text_config({"model_type": "llama"}, False).window is None
    assert text_config({"model_type": "mistral"}, False).window == 4096  # MistralConfig's default
    assert text_config({"model_type": "mistral", "sliding_window": None}, False).window is None
