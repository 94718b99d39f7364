"""Checks of the InternVL2 test oracle (tests/internvl_ref.py) against upstream transcriptions and transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import internvl_ref as R
from helpers import assert_clear_margins, picture

VARIANTS = {
    "qwen2": R.TinyInternVL(),
    "qwen2-v25": R.TinyInternVL(template="internvl2_5", norm_type="rms_norm", qk_normalization=True,
                                select_layer=-2, ps_version="v1", tie_word_embeddings=True, num_key_value_heads=4),
    "qwen2-bf16": R.TinyInternVL(image_size=84, qkv_bias=False, dtype="bfloat16", template="phi3-chat"),
    "internlm2": R.TinyInternVL(llm="internlm2", template="internlm2-chat"),
    "internlm2-mqa": R.TinyInternVL(llm="internlm2", template="internlm2-chat", num_key_value_heads=1,
                                    tie_word_embeddings=True, qk_normalization=True, norm_type="rms_norm",
                                    select_layer=-2, ps_version="v1"),
}
SHARDS = {"qwen2-bf16": 2, "internlm2": 2}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("internvl")
    return {name: R.write_checkpoint(root / name, k, seed=1, shards=SHARDS.get(name, 1)) for name, k in VARIANTS.items()}


@pytest.fixture(scope="module")
def models(checkpoints):
    return {name: R.reference_model(path) for name, path in checkpoints.items()}


# ----------------------------------------------------------------------------- upstream transcription (torch)


def _rms(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _vit_norm(v, w, name, x):
    if v["norm_type"] == "rms_norm":
        return _rms(x, w[name + ".weight"], v["layer_norm_eps"])
    return F.layer_norm(x, (x.shape[-1],), w[name + ".weight"], w[name + ".bias"], v["layer_norm_eps"])


def _vit_attention(v, w, p, x):
    """InternAttention._naive_attn."""
    b, n, c = x.shape
    heads = v["num_attention_heads"]
    qkv = F.linear(x, w[p + "attn.qkv.weight"], w.get(p + "attn.qkv.bias"))
    q, k, vv = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
    if v["qk_normalization"]:
        q = _rms(q.transpose(1, 2).flatten(-2, -1), w[p + "attn.q_norm.weight"], v["layer_norm_eps"])
        k = _rms(k.transpose(1, 2).flatten(-2, -1), w[p + "attn.k_norm.weight"], v["layer_norm_eps"])
        q, k = (t.view(b, n, heads, c // heads).transpose(1, 2) for t in (q, k))
    attn = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    return F.linear((attn @ vv).transpose(1, 2).reshape(b, n, c), w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])


def _vit_hidden_states(v, w, pixel_values):
    """InternVisionModel with output_hidden_states: (embeddings, layer 1, ..., layer L)."""
    p = "vision_model.embeddings."
    x = F.conv2d(pixel_values, w[p + "patch_embedding.weight"], w[p + "patch_embedding.bias"], stride=v["patch_size"])
    n, _, gh, gw = x.shape
    x = torch.cat([w[p + "class_embedding"].expand(n, 1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    pos, grid = w[p + "position_embedding"], v["image_size"] // v["patch_size"]
    patch_pos = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=(gh, gw), mode="bicubic", align_corners=False)
    x = x + torch.cat([pos[:, :1], patch_pos.reshape(1, -1, gh * gw).permute(0, 2, 1)], dim=1)
    states = [x]
    for i in range(v["num_hidden_layers"]):
        lp = f"vision_model.encoder.layers.{i}."
        x = x + _vit_attention(v, w, lp, _vit_norm(v, w, lp + "norm1", x)) * w[lp + "ls1"]
        h = F.linear(_vit_norm(v, w, lp + "norm2", x), w[lp + "mlp.fc1.weight"], w[lp + "mlp.fc1.bias"])
        x = x + F.linear(F.gelu(h), w[lp + "mlp.fc2.weight"], w[lp + "mlp.fc2.bias"]) * w[lp + "ls2"]
        states.append(x)
    return states


def _pixel_shuffle(x, scale, version):
    n, wd, h, c = x.size()
    x = x.view(n, wd, int(h * scale), int(c / scale)).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * scale), int(wd * scale), int(c / (scale * scale)))
    return x if version == "v1" else x.permute(0, 2, 1, 3).contiguous()


def _extract_feature(cfg, w, pixel_values):
    """InternVLChatModel.extract_feature."""
    vit = _vit_hidden_states(cfg["vision_config"], w, pixel_values)[cfg["select_layer"]][:, 1:, :]
    side = int(vit.shape[1] ** 0.5)
    vit = _pixel_shuffle(vit.reshape(vit.shape[0], side, side, -1), cfg["downsample_ratio"], cfg.get("ps_version", "v1"))
    vit = vit.reshape(vit.shape[0], -1, vit.shape[-1])
    vit = F.layer_norm(vit, (vit.shape[-1],), w["mlp1.0.weight"], w["mlp1.0.bias"])
    return F.linear(F.gelu(F.linear(vit, w["mlp1.1.weight"], w["mlp1.1.bias"])), w["mlp1.3.weight"], w["mlp1.3.bias"])


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _qkv(llm, w, p, h):
    """Queries, keys, values (T, heads, head_dim); InternLM2 reads its fused wqkv as upstream's rearrange does."""
    t, heads, kv = h.shape[0], llm["num_attention_heads"], llm["num_key_value_heads"]
    hd, groups = llm["hidden_size"] // heads, heads // kv
    if llm["model_type"] == "internlm2":
        g = F.linear(h, w[p + "attention.wqkv.weight"]).view(t, kv, groups + 2, hd)  # 'q (h gs d) -> q h gs d'
        return g[:, :, :groups].reshape(t, heads, hd), g[:, :, -2], g[:, :, -1]
    proj = [F.linear(h, w[f"{p}self_attn.{n}_proj.weight"], w[f"{p}self_attn.{n}_proj.bias"]) for n in "qkv"]
    return proj[0].view(t, heads, hd), proj[1].view(t, kv, hd), proj[2].view(t, kv, hd)


def _llm_logits(llm, w, x):
    """Decoder-only forward (RMSNorm, rotate-half RoPE, GQA, SwiGLU) on upstream names; x is (T, hidden)."""
    il = llm["model_type"] == "internlm2"
    names = ({"attn_norm": "attention_norm", "ffn_norm": "ffn_norm", "o": "attention.wo", "gate": "feed_forward.w1",
              "up": "feed_forward.w3", "down": "feed_forward.w2"} if il else
             {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "o": "self_attn.o_proj",
              "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"})
    t, heads, eps = x.shape[0], llm["num_attention_heads"], llm["rms_norm_eps"]
    hd, groups = llm["hidden_size"] // heads, heads // llm["num_key_value_heads"]
    inv_freq = 1.0 / (llm["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.outer(torch.arange(t).float(), inv_freq)
    cos, sin = torch.cat((freqs, freqs), -1).cos()[:, None], torch.cat((freqs, freqs), -1).sin()[:, None]
    mask = torch.full((t, t), float("-inf")).triu(1)
    for i in range(llm["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        q, k, v = _qkv(llm, w, p, _rms(x, w[p + names["attn_norm"] + ".weight"], eps))
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        att = (torch.einsum("qhd,khd->hqk", q, k) / hd**0.5 + mask).softmax(-1)
        x = x + F.linear(torch.einsum("hqk,khd->qhd", att, v).reshape(t, -1), w[p + names["o"] + ".weight"])
        h = _rms(x, w[p + names["ffn_norm"] + ".weight"], eps)
        up = F.silu(F.linear(h, w[p + names["gate"] + ".weight"])) * F.linear(h, w[p + names["up"] + ".weight"])
        x = x + F.linear(up, w[p + names["down"] + ".weight"])
    x = _rms(x, w["language_model.model.norm.weight"], eps)
    embed = w["language_model.model.tok_embeddings.weight" if il else "language_model.model.embed_tokens.weight"]
    head = w.get("language_model.output.weight" if il else "language_model.lm_head.weight", embed)
    return F.linear(x, head)


def upstream_logits(path, input_ids, pixel_values):
    """All-position logits of upstream's InternVLChatModel.forward, transcribed independently of transformers."""
    cfg, weights = R.read_checkpoint(path)
    w = {n: torch.from_numpy(a) for n, a in weights.items()}
    il = cfg["llm_config"]["model_type"] == "internlm2"
    ids = torch.tensor(input_ids)
    x = w["language_model.model.tok_embeddings.weight" if il else "language_model.model.embed_tokens.weight"][ids].clone()
    if pixel_values is not None:
        vit = _extract_feature(cfg, w, torch.from_numpy(pixel_values))
        x[ids == R.image_context_token_id(path)] = vit.reshape(-1, x.shape[-1])
    return _llm_logits(cfg["llm_config"], w, x).numpy()


# ----------------------------------------------------------------------------- checkpoint files


def test_qwen2_pretokenize_regex_is_transformers_own():
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    assert R.QWEN2_PRETOKENIZE_REGEX == PRETOKENIZE_REGEX


@pytest.mark.parametrize("name", ["qwen2", "internlm2"])
def test_checkpoint_has_upstream_layout(checkpoints, name):
    path, knobs = checkpoints[name], VARIANTS[name]
    cfg, weights = R.read_checkpoint(path)
    assert cfg["architectures"] == ["InternVLChatModel"] and cfg["model_type"] == "internvl_chat"
    assert cfg["vision_config"]["model_type"] == "intern_vit_6b"
    assert cfg["llm_config"]["architectures"] == [{"qwen2": "Qwen2ForCausalLM", "internlm2": "InternLM2ForCausalLM"}[knobs.llm]]
    assert cfg["llm_config"]["vocab_size"] >= len(json.loads((path / "tokenizer.json").read_text())["model"]["vocab"])
    expected = {"vision_model.embeddings.class_embedding", "vision_model.embeddings.position_embedding",
                "vision_model.encoder.layers.1.attn.qkv.weight", "vision_model.encoder.layers.0.ls1", "mlp1.3.bias"}
    expected |= ({"language_model.model.tok_embeddings.weight", "language_model.model.layers.1.attention.wqkv.weight",
                  "language_model.model.layers.0.feed_forward.w2.weight", "language_model.output.weight"}
                 if knobs.llm == "internlm2" else
                 {"language_model.model.embed_tokens.weight", "language_model.model.layers.1.self_attn.k_proj.bias",
                  "language_model.lm_head.weight"})
    assert expected <= set(weights)
    assert not np.allclose(weights["vision_model.encoder.layers.0.ls2"], 1.0)
    assert (path / "generation_config.json").exists() and (path / "special_tokens_map.json").exists()


def test_shards_and_bf16_follow_hf_conventions(checkpoints):
    from safetensors import safe_open

    path = checkpoints["qwen2-bf16"]
    index = json.loads((path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    with safe_open(str(path / files[0]), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.bfloat16
    assert index["metadata"]["total_size"] == 2 * sum(a.size for a in R.read_checkpoint(path)[1].values())
    assert not (path / "model.safetensors").exists()


def test_tied_checkpoint_has_no_output_matrix(checkpoints):
    assert "language_model.output.weight" not in R.read_checkpoint(checkpoints["internlm2-mqa"])[1]
    assert "language_model.lm_head.weight" not in R.read_checkpoint(checkpoints["qwen2-v25"])[1]


def test_same_seed_same_files(tmp_path):
    a = R.write_checkpoint(tmp_path / "a", R.TinyInternVL(), seed=3)
    b = R.write_checkpoint(tmp_path / "b", R.TinyInternVL(), seed=3)
    for name in ("tokenizer.json", "model.safetensors", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


@pytest.mark.parametrize("name", ["qwen2", "internlm2"])
def test_auto_tokenizer_agrees_with_tokenizer_json(checkpoints, name):
    from tokenizers import Tokenizer

    path = checkpoints[name]
    prompt = R.upstream_prompt("What is in the picture?", VARIANTS[name].template, [2], 4)
    ids = R.upstream_prompt_ids(path, prompt)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    assert ids == tok.encode(prompt).ids
    for special in R.INTERNVL_SPECIAL_TOKENS:
        assert tok.encode(special, add_special_tokens=False).ids == [tok.token_to_id(special)]
    bos = tok.token_to_id("<s>")
    assert (ids[0] == bos) == (name == "internlm2")
    assert R.reference_config(path).image_token_id == tok.token_to_id("<IMG_CONTEXT>")


# ----------------------------------------------------------------------------- reference model


def test_internlm2_wqkv_split_reads_groups_per_kv_head():
    rows = np.arange(8, dtype=np.float32)[:, None]  # 4 heads, 2 kv heads, head_dim 1: [q q k v][q q k v]
    q, k, v = R.split_internlm2_wqkv(rows, num_heads=4, num_kv_heads=2)
    assert q[:, 0].tolist() == [0, 1, 4, 5] and k[:, 0].tolist() == [2, 6] and v[:, 0].tolist() == [3, 7]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_reference_matches_upstream_transcription(checkpoints, models, name):
    knobs, path = VARIANTS[name], checkpoints[name]
    pv = np.concatenate([R.upstream_pixel_values(picture(130, 70), knobs.image_size, 1, knobs.max_dynamic_patch, True),
                         R.upstream_pixel_values(picture(60, 60, 1), knobs.image_size, 1, knobs.max_dynamic_patch, True)])
    question = R.upstream_multi_image_question("Describe the two images.", 2)
    ids = R.upstream_prompt_ids(path, R.upstream_prompt(question, knobs.template, [3, 1], knobs.num_image_token))
    got = R.reference_logits(models[name], ids, pv, all_positions=True)
    want = upstream_logits(path, ids, pv)
    assert got.shape == want.shape and want.std() > 1.0
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_pixel_shuffle_v1_is_applied_and_differs_from_v2(checkpoints, models):
    path, knobs = checkpoints["qwen2-v25"], VARIANTS["qwen2-v25"]
    pv = torch.from_numpy(R.upstream_pixel_values(picture(70, 70), knobs.image_size, 1, 1, False))
    cfg, weights = R.read_checkpoint(path)
    w = {n: torch.from_numpy(a) for n, a in weights.items()}
    v1, v2 = (_extract_feature({**cfg, "ps_version": v}, w, pv) for v in ("v1", "v2"))
    got = models["qwen2-v25"].model.get_image_features(pixel_values=pv).pooler_output
    torch.testing.assert_close(got, v1, atol=1e-5, rtol=0)
    assert not torch.allclose(v1, v2, atol=1e-3)


@pytest.mark.parametrize("name", ["qwen2", "internlm2-mqa"])
def test_greedy_matches_a_loop_without_cache(checkpoints, models, name):
    from tokenizers import Tokenizer

    knobs, path = VARIANTS[name], checkpoints[name]
    pv = R.upstream_pixel_values(picture(100, 40), knobs.image_size, 1, knobs.max_dynamic_patch, True)
    ids = R.upstream_prompt_ids(path, R.upstream_prompt("Describe it.", knobs.template, [len(pv)], knobs.num_image_token))
    eos = Tokenizer.from_file(str(path / "tokenizer.json")).token_to_id(R.upstream_eos_token(knobs.template))
    seq, steps = list(ids), []
    while len(seq) < len(ids) + 6 and seq[-1] != eos:
        steps.append(R.reference_logits(models[name], seq, pv))
        seq.append(int(np.argmax(steps[-1])))
    assert_clear_margins(steps)
    assert R.reference_greedy(models[name], ids, pv, max_new_tokens=6, eos_token_id=eos) == seq[len(ids):]


def test_greedy_stops_on_eos(checkpoints, models):
    path, knobs = checkpoints["qwen2"], VARIANTS["qwen2"]
    ids = R.upstream_prompt_ids(path, R.upstream_prompt("Hello", knobs.template, [], knobs.num_image_token))
    logits = R.reference_logits(models["qwen2"], ids)
    assert_clear_margins(logits)
    first = int(np.argmax(logits))
    assert R.reference_greedy(models["qwen2"], ids, None, max_new_tokens=5, eos_token_id=first) == [first]


# ----------------------------------------------------------------------------- image preprocessing


def _hf_processor(size: int, min_patches: int, max_patches: int):
    from transformers import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil(size={"height": size, "width": size}, crop_to_patches=True,
                                    min_patches=min_patches, max_patches=max_patches,
                                    image_mean=list(R.IMAGENET_MEAN), image_std=list(R.IMAGENET_STD))


@pytest.mark.parametrize("size", [(130, 70), (56, 56), (40, 200), (300, 90), (57, 55), (33, 17)])
def test_pixel_values_equal_transformers_processor(size):
    image = picture(*size)
    want = _hf_processor(56, 1, 6)(images=[image], return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(R.upstream_pixel_values(image, 56, 1, 6, use_thumbnail=True), want)


def test_grid_agrees_with_transformers_when_min_num_is_1():
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    for max_num in (1, 2, 6, 12):
        for w, h in [(w, h) for w in range(8, 400, 7) for h in range(8, 400, 11)]:
            assert R.upstream_grid(w, h, 28, 1, max_num) == get_optimal_tiled_canvas((h, w), (28, 28), 1, max_num)


def test_grid_differs_from_transformers_on_equal_products():
    """Upstream sorts a *set* of grids by tile count; transformers a list built column-major. With min_num == max_num
    == 4 the 2x2 and 4x1 grids tie on a 5:2 image and the tie rule picks by order, so the two disagree."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    assert R.upstream_grid(100, 40, 28, 4, 4) == (2, 2)
    assert get_optimal_tiled_canvas((40, 100), (28, 28), 4, 4) == (4, 1)


def test_tiles_are_row_major_crops_plus_thumbnail():
    image = picture(150, 60)
    tiles = R.upstream_tiles(image, 28, 1, 12, use_thumbnail=True)
    cols, rows = R.upstream_grid(150, 60, 28, 1, 12)
    assert len(tiles) == cols * rows + 1 and all(t.size == (28, 28) for t in tiles)
    resized = np.asarray(image.resize((28 * cols, 28 * rows), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(np.asarray(tiles[cols]), resized[28:56, 0:28])
    np.testing.assert_array_equal(np.asarray(tiles[-1]), np.asarray(image.resize((28, 28), Image.Resampling.BICUBIC)))
    assert len(R.upstream_tiles(image, 28, 1, 1, use_thumbnail=True)) == 1  # no thumbnail beside a single tile


def test_transform_normalizes_with_imagenet_statistics():
    tile = Image.new("RGB", (14, 14), (255, 0, 128))
    x = R.upstream_transform(tile, 14)
    assert x.shape == (3, 14, 14) and x.dtype == np.float32
    want = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(x[:, 0, 0], want, rtol=1e-6)


# ----------------------------------------------------------------------------- prompts


def test_hermes2_prompt_is_chatml_without_newlines_after_im_end():
    prompt = R.upstream_prompt("What is this?", "Hermes-2", [1], 2)
    assert prompt == ("<|im_start|>system\n" + R.SYSTEM_MESSAGE_V2 + "<|im_end|><|im_start|>user\n<img>"
                      "<IMG_CONTEXT><IMG_CONTEXT></img>\nWhat is this?<|im_end|><|im_start|>assistant\n")


def test_internvl2_5_prompt_has_newline_separators():
    prompt = R.upstream_prompt("Hi", "internvl2_5", [], 256)
    assert prompt == ("<|im_start|>system\n" + R.SYSTEM_MESSAGE_V2_5 + "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                      "<|im_start|>assistant\n")


def test_phi3_prompt_and_eos_tokens():
    assert R.upstream_prompt("Hi", "phi3-chat", [], 4).endswith("<|end|><|user|>\nHi<|end|><|assistant|>\n")
    assert [R.upstream_eos_token(t) for t in ("Hermes-2", "internvl2_5", "internlm2-chat", "phi3-chat")] == [
        "<|im_end|>", "<|im_end|>", "<|im_end|>", "<|end|>"]


def test_images_replace_placeholders_in_order():
    question = R.upstream_multi_image_question("Compare.", 2)
    assert question == "Image-1: <image>\nImage-2: <image>\nCompare."
    prompt = R.upstream_prompt(question, "internvl2_5", [3, 1], 4)
    assert "<image>" not in prompt and prompt.count("<IMG_CONTEXT>") == 16
    assert "Image-1: <img>" + "<IMG_CONTEXT>" * 12 + "</img>\nImage-2: <img>" + "<IMG_CONTEXT>" * 4 + "</img>\n" in prompt


def test_image_prefix_only_without_history():
    assert "user\n<image>" not in R.upstream_prompt("Hi", "internvl2_5", [], 4)
    with_history = R.upstream_prompt("And now?", "internvl2_5", [1], 4, history=[("<image>\nWhat?", "A cat.")])
    assert with_history.count("<img>") == 1 and "user\nAnd now?<|im_end|>" in with_history
    assert "user\n<img>" + "<IMG_CONTEXT>" * 4 + "</img>\nWhat?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>" in with_history


@pytest.mark.parametrize("name", ["qwen2", "internlm2"])
def test_prompt_ids_hold_one_context_id_per_image_token(checkpoints, name):
    knobs, path = VARIANTS[name], checkpoints[name]
    question = R.upstream_multi_image_question("Describe.", 2)
    ids = R.upstream_prompt_ids(path, R.upstream_prompt(question, knobs.template, [3, 2], knobs.num_image_token))
    assert ids.count(R.image_context_token_id(path)) == knobs.num_image_token * 5 == 20


def test_two_images_without_placeholders_expand_only_the_first():
    """chat() prefixes a single `<image>\n`; the second replace finds nothing (upstream then fails on the shapes)."""
    prompt = R.upstream_prompt("Describe.", "Hermes-2", [3, 2], 4)
    assert prompt.count("<img>") == 1 and prompt.count("<IMG_CONTEXT>") == 12
