"""Checks every VLM family's tests share: the NumPy decode path against the Paddle one, and a copy of a
checkpoint as PaddleMIX publishes it (.pdparams, Linear weights (in, out))."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def assert_fast_decode_matches_paddle(model, prompt, monkeypatch) -> None:
    """Decoding on CPU runs in NumPy (layers/fastdecode.py, layers/linear.py); MIX_FAST_DECODE=0 is the
    Paddle oracle. Compares the prompt's logits and two decode steps' under both."""

    def logits_of_three_steps() -> np.ndarray:
        cache = model.make_cache(len(prompt.ids) + 3)
        out = [model.forward(model.embed_prompt(prompt), cache).numpy()]
        for token in prompt.ids[-3:-1]:
            out.append(model.forward(model.embed_tokens([token]), cache).numpy())
        return np.concatenate(out)

    assert model.net.language_model.fast_decoder() is not None
    fast = logits_of_three_steps()
    monkeypatch.setenv("MIX_FAST_DECODE", "0")
    assert model.net.language_model.fast_decoder() is None
    np.testing.assert_allclose(fast, logits_of_three_steps(), atol=1e-5 * max(1.0, np.abs(fast).max()))


def write_paddle_copy(path: Path, copy: Path) -> Path:
    """The checkpoint at `path` as PaddleMIX saves it: the same names in model_state.pdparams, every 2-D
    weight but the embedding tables transposed to Paddle's (in, out), lm_head included; the other files copied."""
    import paddle

    from mixcli.weights import open_checkpoint

    copy.mkdir()
    for f in path.iterdir():
        if f.suffix != ".safetensors":
            (copy / f.name).write_bytes(f.read_bytes())
    tensors = {}
    for name, ref in open_checkpoint(path).items():
        value = ref.numpy()
        if value.ndim == 2 and "embed" not in name and "tok_embeddings" not in name:
            value = value.T.copy()
        tensors[name] = paddle.to_tensor(value)
    paddle.save(tensors, str(copy / "model_state.pdparams"))
    return copy
