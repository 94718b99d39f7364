"""InternLM2-based InternVL2 (2B, 8B) as PaddleMIX publishes it: the same names in a .pdparams file,
every Linear weight (in, out), InternLM2's fused wqkv included. It must load to the same logits as the
original checkpoint and as transformers' port, with grouped and with plain multi-head attention."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from internvl_ref import TinyInternVL, reference_logits, reference_model, write_checkpoint
from mixcli.models import load_model
from vlm_checks import write_paddle_copy

HEADS = {"grouped": 2, "ungrouped": 4}  # key/value heads for 4 query heads


@pytest.fixture(scope="module", params=list(HEADS))
def checkpoints(request, tmp_path_factory):
    knobs = TinyInternVL(llm="internlm2", template="internlm2-chat", num_key_value_heads=HEADS[request.param])
    root = tmp_path_factory.mktemp(f"internlm2-{request.param}")
    path = write_checkpoint(root / "original", knobs, seed=4)
    return path, write_paddle_copy(path, root / "paddle-copy")


def test_paddle_copy_gives_the_reference_logits(checkpoints):
    path, copy = checkpoints
    original, paddle_copy = load_model(path), load_model(copy, allow_pickle=True)
    assert paddle_copy.net.language_model.config.num_key_value_heads == original.config.text.num_key_value_heads
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    prompt = paddle_copy.prepare([("What is written here?", None)], [image])
    expected = reference_logits(reference_model(path), prompt.ids, prompt.pixel_values, True)
    for model in (original, paddle_copy):
        cache = model.make_cache(len(prompt.ids) + 1)
        logits = model.net.language_model(model.embed_prompt(prompt), cache, all_logits=True).numpy()[0]
        assert np.abs(logits - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))


def test_wqkv_splits_the_same_in_both_layouts():
    """A weight (out, in) in torch's layout and (in, out) in Paddle's gives the same projections, each
    in its own layout; a bias (out,) is split the same way in both."""
    from mixcli.models.internvl_chat.config import InternVLConfig
    from mixcli.models.internvl_chat.model import split_attention

    cfg = InternVLConfig.from_dict({
        "llm_config": {"architectures": ["InternLM2ForCausalLM"], "vocab_size": 8, "hidden_size": 8,
                       "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "bias": True},
        "vision_config": {},
    })  # fmt: skip
    rows = (4 + 2 * 2) * 2  # (heads + 2 kv heads) * head_dim
    weight, bias = np.arange(rows * 8, dtype=np.float32).reshape(rows, 8), np.arange(rows, dtype=np.float32)
    name = "language_model.model.layers.0.attention.wqkv."
    torch_parts = split_attention(name + "weight", weight, cfg, "torch")
    paddle_parts = split_attention(name + "weight", weight.T.copy(), cfg, "paddle")
    expected_names = sorted(name.replace("attention.wqkv.", f"self_attn.{p}_proj.weight") for p in "qkv")
    assert sorted(torch_parts) == sorted(paddle_parts) == expected_names
    for key, value in torch_parts.items():
        np.testing.assert_array_equal(paddle_parts[key], value.T)
    # kv head 0 holds query heads 0-1, then its key and value head: rows 0-3 q, 4-5 k, 6-7 v.
    q = torch_parts[name.replace("attention.wqkv.", "self_attn.q_proj.weight")]
    np.testing.assert_array_equal(q[:4], weight[:4])
    np.testing.assert_array_equal(q[4:], weight[8:12])
    biases = {layout: split_attention(name + "bias", bias, cfg, layout) for layout in ("torch", "paddle")}
    for key, value in biases["torch"].items():
        np.testing.assert_array_equal(biases["paddle"][key], value)
    assert biases["torch"][name.replace("attention.wqkv.", "self_attn.k_proj.bias")].tolist() == [4, 5, 12, 13]
