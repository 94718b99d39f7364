"""CLIP tokenizer and text encoders against transformers' CLIPTokenizer / CLIPTextModel(WithProjection)."""

from __future__ import annotations

import json

import numpy as np
import paddle
import pytest
import torch
from sd_ref import write_sd15, write_sdxl, write_tokenizer
from transformers import CLIPTextModel, CLIPTextModelWithProjection
from transformers import CLIPTokenizer as RefTokenizer

from mixcli.diffusion.clip import TOKENIZER_FILES, CLIPTokenizer, build_text_encoder, sanitize
from mixcli.errors import CheckpointError
from mixcli.weights import open_checkpoint

PROMPTS = [
    "",
    "a photo of a cat sitting on a red chair",
    "A PHOTO OF AN Astronaut Riding A Horse",
    "blurry, low quality; watermark: text... (masterpiece:1.2) [x] {y} #tag @me",
    "  extra   whitespace\t\tand\nnew lines  ",
    "café naïve Ångström résumé e\u0301 ﬁ",
    "emoji 🐱🚀 and 日本語のテキスト",
    "numbers 1234567 3.14159 -42 1e10",
    "it's a dog's life, we'll see, they're I'm you've he'd",
    "hello! wow!! yes!!!",
    "<|endoftext|> special <|startoftext|> tokens",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 12),  # over 77 tokens
]
FOLDERS = [("sd15", "text_encoder"), ("sdxl", "text_encoder"), ("sdxl", "text_encoder_2")]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    return {"sd15": write_sd15(root / "sd15"), "sdxl": write_sdxl(root / "sdxl", fp16=True)}


def reference_ids(folder, prompts) -> np.ndarray:
    ref = RefTokenizer.from_pretrained(str(folder))
    return np.array(ref(prompts, padding="max_length", max_length=77, truncation=True)["input_ids"])


def reference_model(folder, **kwargs):
    config = json.loads((folder / "config.json").read_text())
    cls = CLIPTextModelWithProjection if "CLIPTextModelWithProjection" in config["architectures"] else CLIPTextModel
    return cls.from_pretrained(str(folder), **kwargs).eval()


def reference_outputs(model, ids: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(torch.from_numpy(ids), output_hidden_states=True)
    if isinstance(model, CLIPTextModelWithProjection):
        with torch.no_grad():  # the pooled output before the projection
            pooled = model.text_model(torch.from_numpy(ids)).pooler_output
        extra = {"pooled": pooled, "text_embeds": out.text_embeds}
    else:
        extra = {"pooled": out.pooler_output}
    outs = {"last_hidden_state": out.last_hidden_state, "penultimate": out.hidden_states[-2], **extra}
    return {k: v.numpy() for k, v in outs.items()} | {"hidden_states": [h.numpy() for h in out.hidden_states]}


def assert_close(ours, ref: np.ndarray, rel: float = 1e-4) -> None:
    ours = ours.numpy() if hasattr(ours, "numpy") else ours
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= rel * max(1.0, np.abs(ref).max())


def our_model(folder, weights=None):
    config = json.loads((folder / "config.json").read_text())
    return build_text_encoder(config, open_checkpoint(folder) if weights is None else weights)


# --- tokenizer ------------------------------------------------------------------------------


@pytest.mark.parametrize("pad", ["<|endoftext|>", "!"])
def test_token_ids_match_transformers(tmp_path, pad):
    write_tokenizer(tmp_path, pad_token=pad)
    ours = CLIPTokenizer.from_dir(tmp_path)
    ids = ours(PROMPTS)
    assert ids.dtype == np.int64 and ids.shape == (len(PROMPTS), 77)
    np.testing.assert_array_equal(ids, reference_ids(tmp_path, PROMPTS))
    assert ours.pad_id == RefTokenizer.from_pretrained(str(tmp_path)).pad_token_id
    assert (ids[:, 0] == ours.bos_id).all()


def test_truncation_keeps_eos_last(tmp_path):
    write_tokenizer(tmp_path)
    tok = CLIPTokenizer.from_dir(tmp_path)
    ids = tok([PROMPTS[-1]])[0]
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and (ids[1:-1] != tok.eos_id).all()


def test_sdxl_tokenizers_pad_differently(pipelines):
    one = CLIPTokenizer.from_dir(pipelines["sdxl"] / "tokenizer")
    two = CLIPTokenizer.from_dir(pipelines["sdxl"] / "tokenizer_2")
    assert two.pad_id == json.loads((pipelines["sdxl"] / "tokenizer_2" / "vocab.json").read_text())["!"]
    assert one.pad_id == one.eos_id != two.pad_id
    ids = list(two(["a cat"])[0])
    end = ids.index(two.eos_id)
    assert ids[0] == two.bos_id and ids[end + 1 :] == [two.pad_id] * (76 - end)
    np.testing.assert_array_equal(two(PROMPTS), reference_ids(pipelines["sdxl"] / "tokenizer_2", PROMPTS))


@pytest.mark.parametrize("missing", TOKENIZER_FILES)
def test_missing_tokenizer_file_is_named(tmp_path, missing):
    write_tokenizer(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(CheckpointError, match=missing.replace(".", r"\.")):
        CLIPTokenizer.from_dir(tmp_path)


# --- text encoders --------------------------------------------------------------------------


@pytest.mark.parametrize("pipeline, component", FOLDERS)
def test_encoder_matches_transformers(pipelines, pipeline, component):
    folder = pipelines[pipeline]
    tokenizer = "tokenizer_2" if component.endswith("_2") else "tokenizer"
    ids = CLIPTokenizer.from_dir(folder / tokenizer)(PROMPTS)
    ref = reference_outputs(reference_model(folder / component), ids)
    out = our_model(folder / component)(paddle.to_tensor(ids))
    for name in ("last_hidden_state", "penultimate", "pooled"):
        assert_close(getattr(out, name), ref[name])
    if component == "text_encoder_2":
        assert_close(out.text_embeds, ref["text_embeds"])
    else:
        assert out.text_embeds is None


def test_hidden_layer_picks_a_hidden_state(pipelines):
    folder = pipelines["sd15"] / "text_encoder"
    ids = CLIPTokenizer.from_dir(pipelines["sd15"] / "tokenizer")(PROMPTS[:3])
    ref = reference_outputs(reference_model(folder), ids)["hidden_states"]
    model = our_model(folder)
    for layer in (0, 1, -1):
        assert_close(model(paddle.to_tensor(ids), hidden_layer=layer).penultimate, ref[layer])


def test_pooling_at_first_eos_for_current_configs(pipelines, tmp_path):
    """Configs after transformers PR #24773 pool at the first eos_token_id, not at the highest id."""
    source = pipelines["sdxl"] / "text_encoder_2"
    config = json.loads((source / "config.json").read_text()) | {"eos_token_id": 300}
    ids = np.full((2, 77), 5, dtype=np.int64)
    ids[0, [3, 9, 20]] = [300, 573, 300]  # the highest id (573) sits after the first 300
    ids[1, [4, 30]] = [573, 300]
    ref_model = CLIPTextModelWithProjection.from_pretrained(str(source), eos_token_id=300).eval()
    ref = reference_outputs(ref_model, ids)
    out = build_text_encoder(config, open_checkpoint(source))(paddle.to_tensor(ids))
    assert_close(out.pooled, ref["pooled"])
    assert_close(out.text_embeds, ref["text_embeds"])
    assert_close(out.pooled, out.last_hidden_state.numpy()[[0, 1], [3, 30]])


def test_fp16_variant_loads_into_float32(pipelines):
    folder = pipelines["sdxl"] / "text_encoder_2"
    ids = CLIPTokenizer.from_dir(pipelines["sdxl"] / "tokenizer_2")(PROMPTS[:4])
    ref_model = reference_model(folder, variant="fp16", dtype=torch.float32)
    assert next(ref_model.parameters()).dtype == torch.float32
    ref = reference_outputs(ref_model, ids)
    checkpoint = open_checkpoint(folder / "model.fp16.safetensors")
    assert {ref.dtype for ref in checkpoint.values()} == {"float16"}
    model = our_model(folder, checkpoint)
    assert {str(p.dtype) for p in model.parameters()} == {"paddle.float32"}
    out = model(paddle.to_tensor(ids))
    for name in ("last_hidden_state", "penultimate", "pooled", "text_embeds"):
        assert_close(getattr(out, name), ref[name], rel=1e-3)


def test_published_names_with_position_ids_load(pipelines):
    """Older published text_encoder files carry `text_model.` names and an `embeddings.position_ids` buffer."""
    folder = pipelines["sd15"] / "text_encoder"
    plain = dict(open_checkpoint(folder))
    published = {f"text_model.{k}": v for k, v in plain.items()}
    published["text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
    ids = CLIPTokenizer.from_dir(pipelines["sd15"] / "tokenizer")(PROMPTS[:2])
    a = our_model(folder, published)(paddle.to_tensor(ids))
    b = our_model(folder, plain)(paddle.to_tensor(ids))
    np.testing.assert_array_equal(a.last_hidden_state.numpy(), b.last_hidden_state.numpy())


def test_sanitize_is_idempotent(pipelines):
    weights = dict(open_checkpoint(pipelines["sdxl"] / "text_encoder"))
    weights["embeddings.position_ids"] = None
    once = sanitize(weights)
    assert "text_model.embeddings.token_embedding.weight" in once
    assert not any("position_ids" in k for k in once)
    assert list(sanitize(once)) == list(once)
    two = sanitize(dict(open_checkpoint(pipelines["sdxl"] / "text_encoder_2")))
    assert list(two) == list(dict(open_checkpoint(pipelines["sdxl"] / "text_encoder_2")))


def test_published_config_spellings(tmp_path):
    """SD1.5's tokenizer_config.json spells tokens as AddedToken dicts; newer ones add added_tokens_decoder."""
    write_tokenizer(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    flags = {"lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    for kind in ("bos_token", "eos_token", "unk_token", "pad_token"):
        config[kind] = {"__type": "AddedToken", "content": config[kind], **flags}
    special = {"content": "", **flags, "normalized": False, "special": True}
    named = ("<|startoftext|>", "<|endoftext|>")
    config["added_tokens_decoder"] = {str(vocab[t]): special | {"content": t} for t in named}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = CLIPTokenizer.from_dir(tmp_path)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (bos, eos, eos)
    np.testing.assert_array_equal(tok(PROMPTS), reference_ids(tmp_path, PROMPTS))
