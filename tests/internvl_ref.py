"""Test-side oracle for the InternVL2 / InternVL2.5 port: tiny checkpoints in OpenGVLab's layout, transformers' port as the reference, and transcriptions of upstream preprocessing and prompts.

What goes in and comes out
--------------------------
``write_checkpoint`` writes what ``OpenGVLab/InternVL2-1B`` (Qwen2) or ``-2B`` (InternLM2) publish:
``config.json`` (``InternVLChatModel`` / ``internvl_chat`` with ``vision_config`` and
``llm_config``), ``model.safetensors`` (or HF-style shards plus ``model.safetensors.index.json``)
under the upstream parameter names, ``generation_config.json`` and a tiny byte-level BPE
tokenizer (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``).
``reference_model`` builds ``transformers.InternVLForConditionalGeneration`` from those same
files with the renaming rules of transformers' ``convert_internvl_weights_to_hf.py``.

Upstream sources transcribed here (OpenGVLab/InternVL ``internvl_chat/internvl``, same code as
the HF model repos): ``model/internvl_chat/modeling_intern_vit.py`` (vision tower),
``modeling_internvl_chat.py`` (``pixel_shuffle``, ``extract_feature``, ``chat``),
``conversation.py`` (templates, ``SeparatorStyle.MPT``), ``model/internlm2/modeling_internlm2.py``
(fused ``wqkv``), and the model card's ``build_transform`` / ``dynamic_preprocess``.

What transformers' port cannot express, and how this module handles it
----------------------------------------------------------------------
- ``ps_version: "v1"``: the port always does the v2 pixel shuffle. ``reference_model`` replaces
  ``model.model.pixel_shuffle`` on that one instance with upstream's v1 (no final transpose).
- ``qk_normalization``: the port's q/k RMSNorm has a fixed eps of 1e-6; upstream uses
  ``layer_norm_eps``. The tiny checkpoints write ``layer_norm_eps=1e-6``, so they agree.
- Position embeddings: upstream always bicubic-resamples them to the patch grid; the port only
  when the grid differs. Identical while ``force_image_size == vision_config.image_size`` (written so).
- InternLM2 ``rope_scaling`` (``dynamic`` in the real -2B config) and ``bias: true``: not written
  by the tiny checkpoints; ``reference_model`` refuses them rather than guess.
- InternLM2 is run as a Llama (``wqkv`` split per kv-head group as upstream's ``rearrange``
  reads it); its real tokenizer is sentencepiece (``tokenizer.model``, remote code) — the tiny
  one is a byte-level BPE ``tokenizer.json`` with ``<s>`` prepended by a post-processor.
- Tiling: transformers' GotOcr2ImageProcessor gives the same pixels bit for bit, except that it
  orders equal-tile-count grids differently from upstream's sorted *set*; with min_num > 1 (e.g.
  min = max = 4 on a 5:2 image) the tie rule then picks another grid. ``upstream_grid`` follows upstream.
- Supported by the port and exercised: qkv bias, ``norm_type: rms_norm``, ``select_layer: -2``,
  layer scale (``ls1``/``ls2``), GQA, tied or untied word embeddings.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
# Transcribed from transformers' Qwen2Tokenizer (PRETOKENIZE_REGEX); a test asserts they match.
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
INTERNVL_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>",
    "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>",
)
INTERNLM2_LEADING_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 as in InternLM2's vocabulary

# conversation.py: the InternVL2 templates keep the older system message on purpose.
SYSTEM_MESSAGE_V2 = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
SYSTEM_MESSAGE_V2_5 = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"

_CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "Describe the image in detail.",
    "What is in the picture? Please describe it briefly.",
    "A cat is sitting on a red chair next to the window.",
    "There are two dogs playing with a ball in the park.",
    "The sky is blue and the sun is shining over the mountains.",
    "How many people are standing in front of the building?",
    "She reads a book while drinking a cup of coffee.",
    "Image-1: <image>\nImage-2: <image>\nWhat is different between the two images?",
    "The text on the sign says: open from 9 to 5, closed on Sunday.",
    "Answer the question using a single word or phrase.",
    "Please compare the colors, shapes and sizes of the objects.",
    "A small boat is floating on the calm water of the lake.",
    "The children are laughing, running and jumping in the garden.",
    "Is there a car in this photo? Yes, there is a white car.",
    "The chart shows the numbers 1, 2, 3, 10, 42 and 100.",
    "system user assistant\nsystem user assistant\n",
    SYSTEM_MESSAGE_V2,
    SYSTEM_MESSAGE_V2_5,
)


@dataclass(frozen=True)
class TinyInternVL:
    """Knobs of a tiny random InternVL2 checkpoint; field names follow upstream's config where one exists."""

    llm: str = "qwen2"  # "qwen2" (InternVL2-1B, 2.5-1B/4B) | "internlm2" (InternVL2-2B/8B)
    template: str = "Hermes-2"  # "Hermes-2" | "internvl2_5" | "internlm2-chat" | "phi3-chat"
    image_size: int = 56
    patch_size: int = 14
    downsample_ratio: float = 0.5
    vision_hidden_size: int = 32
    vision_heads: int = 2
    vision_layers: int = 2
    vision_intermediate_size: int = 64
    qkv_bias: bool = True
    qk_normalization: bool = False
    norm_type: str = "layer_norm"  # "layer_norm" | "rms_norm"
    select_layer: int = -1  # -1 | -2
    ps_version: str = "v2"  # "v1" | "v2"
    hidden_size: int = 32
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    num_hidden_layers: int = 2
    intermediate_size: int = 64
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = False
    use_thumbnail: bool = True
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 6
    dtype: str = "float32"  # "float32" | "bfloat16" (safetensors dtype)
    vocab_size: int | None = None  # default: the tokenizer's size padded to 16; benchmarks set the real one

    @property
    def num_image_token(self) -> int:
        """Tokens per tile, as upstream's ``InternVLChatModel.num_image_token``."""
        return int((self.image_size // self.patch_size) ** 2 * (self.downsample_ratio**2))


# ----------------------------------------------------------------------------- tokenizer


def _train_tokenizer(llm: str):
    """A byte-level BPE with Qwen2's pipeline (NFC, Qwen2 split regex, ByteLevel) and InternVL's added tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    leading = list(INTERNLM2_LEADING_TOKENS) if llm == "internlm2" else []
    trainer = trainers.BpeTrainer(
        vocab_size=400, show_progress=False, special_tokens=leading,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(_CORPUS) * 2, trainer)
    tok.add_special_tokens(list(INTERNVL_SPECIAL_TOKENS))
    if llm == "internlm2":  # InternLM2's tokenizer prepends <s> (add_bos_token=True)
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _tokenizer_config(tok, llm: str) -> dict:
    """tokenizer_config.json in the shape Qwen2's / a fast InternLM2 tokenizer ships it."""
    added = {
        str(i): {"content": t.content, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": True}
        for i, t in sorted(tok.get_added_tokens_decoder().items())
    }
    extra = [t for t in INTERNVL_SPECIAL_TOKENS if t != "<|endoftext|>"]
    if llm == "internlm2":
        special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
        cls = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": True, "add_eos_token": False}
    else:
        special = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None}
        cls = {"tokenizer_class": "Qwen2Tokenizer", "add_prefix_space": False, "errors": "replace"}
    return {**cls, **special, "added_tokens_decoder": added, "additional_special_tokens": extra,
            "clean_up_tokenization_spaces": False, "model_max_length": 8192, "split_special_tokens": False}


def _write_tokenizer(path: Path, llm: str):
    tok = _train_tokenizer(llm)
    tok.save(str(path / "tokenizer.json"))
    config = _tokenizer_config(tok, llm)
    _dump(path / "tokenizer_config.json", config)
    keys = ("bos_token", "eos_token", "pad_token", "unk_token", "additional_special_tokens")
    _dump(path / "special_tokens_map.json", {k: config[k] for k in keys if config[k] is not None})
    return tok


def _dump(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- config.json


def _vision_config(k: TinyInternVL) -> dict:
    return {
        "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
        "hidden_size": k.vision_hidden_size, "num_attention_heads": k.vision_heads,
        "num_hidden_layers": k.vision_layers, "intermediate_size": k.vision_intermediate_size,
        "image_size": k.image_size, "patch_size": k.patch_size, "num_channels": 3,
        "qkv_bias": k.qkv_bias, "qk_normalization": k.qk_normalization, "norm_type": k.norm_type,
        "layer_norm_eps": 1e-6, "hidden_act": "gelu", "initializer_factor": 1.0,
        "initializer_range": 0.02, "drop_path_rate": 0.0, "dropout": 0.0, "attention_dropout": 0.0,
        "use_flash_attn": False, "torch_dtype": k.dtype,
    }


def _llm_config(k: TinyInternVL, vocab_size: int, tok) -> dict:
    common = {
        "vocab_size": vocab_size, "hidden_size": k.hidden_size, "intermediate_size": k.intermediate_size,
        "num_hidden_layers": k.num_hidden_layers, "num_attention_heads": k.num_attention_heads,
        "num_key_value_heads": k.num_key_value_heads, "hidden_act": "silu",
        "max_position_embeddings": k.max_position_embeddings, "rms_norm_eps": k.rms_norm_eps,
        "rope_theta": k.rope_theta, "rope_scaling": None, "tie_word_embeddings": k.tie_word_embeddings,
        "initializer_range": 0.02, "use_cache": True, "torch_dtype": k.dtype,
    }
    if k.llm == "internlm2":
        return {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", **common,
                "bias": False, "attn_implementation": "eager",
                "bos_token_id": tok.token_to_id("<s>"), "eos_token_id": tok.token_to_id("</s>"),
                "pad_token_id": tok.token_to_id("</s>")}
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **common,
            "attention_dropout": 0.0, "use_sliding_window": False,
            "sliding_window": k.max_position_embeddings, "max_window_layers": k.num_hidden_layers,
            "bos_token_id": tok.token_to_id("<|endoftext|>"), "eos_token_id": tok.token_to_id("<|im_end|>")}


def _chat_config(k: TinyInternVL, vocab_size: int, tok) -> dict:
    return {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
        "template": k.template, "select_layer": k.select_layer, "downsample_ratio": k.downsample_ratio,
        "ps_version": k.ps_version, "force_image_size": k.image_size, "dynamic_image_size": True,
        "use_thumbnail": k.use_thumbnail, "min_dynamic_patch": k.min_dynamic_patch,
        "max_dynamic_patch": k.max_dynamic_patch, "pad2square": False,
        "use_backbone_lora": 0, "use_llm_lora": 0, "torch_dtype": k.dtype,
        "vision_config": _vision_config(k), "llm_config": _llm_config(k, vocab_size, tok),
    }


# ----------------------------------------------------------------------------- weights


class _Init:
    """Random tensors at scales that keep activations O(1) and logits well separated."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def normal(self, *shape: int, std: float) -> np.ndarray:
        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    def norm(self, n: int) -> np.ndarray:  # norm weights near 1, not exactly 1
        return (1.0 + self.rng.standard_normal(n) * 0.1).astype(np.float32)

    def scale(self, n: int) -> np.ndarray:  # layer-scale values far from 1.0 so they matter
        return self.rng.uniform(0.2, 1.2, n).astype(np.float32)


def _vision_weights(k: TinyInternVL, r: _Init) -> dict[str, np.ndarray]:
    d, grid = k.vision_hidden_size, k.image_size // k.patch_size
    w = {
        "vision_model.embeddings.class_embedding": r.normal(1, 1, d, std=0.1),
        "vision_model.embeddings.patch_embedding.weight": r.normal(d, 3, k.patch_size, k.patch_size, std=0.02),
        "vision_model.embeddings.patch_embedding.bias": r.normal(d, std=0.02),
        "vision_model.embeddings.position_embedding": r.normal(1, grid * grid + 1, d, std=0.1),
    }
    for i in range(k.vision_layers):
        w.update(_vision_layer(k, r, f"vision_model.encoder.layers.{i}."))
    return w


def _vision_layer(k: TinyInternVL, r: _Init, p: str) -> dict[str, np.ndarray]:
    d, f = k.vision_hidden_size, k.vision_intermediate_size
    w = {p + "attn.qkv.weight": r.normal(3 * d, d, std=0.1), p + "attn.proj.weight": r.normal(d, d, std=0.1),
         p + "attn.proj.bias": r.normal(d, std=0.02), p + "mlp.fc1.weight": r.normal(f, d, std=0.1),
         p + "mlp.fc1.bias": r.normal(f, std=0.02), p + "mlp.fc2.weight": r.normal(d, f, std=0.1),
         p + "mlp.fc2.bias": r.normal(d, std=0.02), p + "ls1": r.scale(d), p + "ls2": r.scale(d),
         p + "norm1.weight": r.norm(d), p + "norm2.weight": r.norm(d)}
    if k.qkv_bias:
        w[p + "attn.qkv.bias"] = r.normal(3 * d, std=0.02)
    if k.norm_type == "layer_norm":
        w[p + "norm1.bias"], w[p + "norm2.bias"] = r.normal(d, std=0.02), r.normal(d, std=0.02)
    if k.qk_normalization:
        w[p + "attn.q_norm.weight"], w[p + "attn.k_norm.weight"] = r.norm(d), r.norm(d)
    return w


def _projector_weights(k: TinyInternVL, r: _Init) -> dict[str, np.ndarray]:
    d_in, d = k.vision_hidden_size * int(1 / k.downsample_ratio) ** 2, k.hidden_size
    return {"mlp1.0.weight": r.norm(d_in), "mlp1.0.bias": r.normal(d_in, std=0.02),
            "mlp1.1.weight": r.normal(d, d_in, std=0.1), "mlp1.1.bias": r.normal(d, std=0.02),
            "mlp1.3.weight": r.normal(d, d, std=0.2), "mlp1.3.bias": r.normal(d, std=0.02)}


def _qwen2_weights(k: TinyInternVL, r: _Init, vocab: int) -> dict[str, np.ndarray]:
    d, f, hd = k.hidden_size, k.intermediate_size, k.hidden_size // k.num_attention_heads
    kv = k.num_key_value_heads * hd
    w = {"language_model.model.embed_tokens.weight": r.normal(vocab, d, std=0.5),
         "language_model.model.norm.weight": r.norm(d)}
    for i in range(k.num_hidden_layers):
        p = f"language_model.model.layers.{i}."
        w.update({p + "self_attn.q_proj.weight": r.normal(d, d, std=0.2), p + "self_attn.q_proj.bias": r.normal(d, std=0.2),
                  p + "self_attn.k_proj.weight": r.normal(kv, d, std=0.2), p + "self_attn.k_proj.bias": r.normal(kv, std=0.2),
                  p + "self_attn.v_proj.weight": r.normal(kv, d, std=0.2), p + "self_attn.v_proj.bias": r.normal(kv, std=0.2),
                  p + "self_attn.o_proj.weight": r.normal(d, d, std=0.2), p + "mlp.gate_proj.weight": r.normal(f, d, std=0.2),
                  p + "mlp.up_proj.weight": r.normal(f, d, std=0.2), p + "mlp.down_proj.weight": r.normal(d, f, std=0.2),
                  p + "input_layernorm.weight": r.norm(d), p + "post_attention_layernorm.weight": r.norm(d)})
    if not k.tie_word_embeddings:
        w["language_model.lm_head.weight"] = r.normal(vocab, d, std=0.5)
    return w


def _internlm2_weights(k: TinyInternVL, r: _Init, vocab: int) -> dict[str, np.ndarray]:
    d, f, hd = k.hidden_size, k.intermediate_size, k.hidden_size // k.num_attention_heads
    qkv_rows = (k.num_attention_heads + 2 * k.num_key_value_heads) * hd
    w = {"language_model.model.tok_embeddings.weight": r.normal(vocab, d, std=0.5),
         "language_model.model.norm.weight": r.norm(d)}
    for i in range(k.num_hidden_layers):
        p = f"language_model.model.layers.{i}."
        w.update({p + "attention.wqkv.weight": r.normal(qkv_rows, d, std=0.2), p + "attention.wo.weight": r.normal(d, d, std=0.2),
                  p + "feed_forward.w1.weight": r.normal(f, d, std=0.2), p + "feed_forward.w3.weight": r.normal(f, d, std=0.2),
                  p + "feed_forward.w2.weight": r.normal(d, f, std=0.2),
                  p + "attention_norm.weight": r.norm(d), p + "ffn_norm.weight": r.norm(d)})
    if not k.tie_word_embeddings:
        w["language_model.output.weight"] = r.normal(vocab, d, std=0.5)
    return w


def original_weights(knobs: TinyInternVL, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The float32 tensors of a tiny checkpoint under upstream's names (what write_checkpoint stores)."""
    r = _Init(seed)
    llm = _internlm2_weights if knobs.llm == "internlm2" else _qwen2_weights
    return {**_vision_weights(knobs, r), **_projector_weights(knobs, r), **llm(knobs, r, vocab_size)}


def _write_safetensors(path: Path, weights: dict[str, np.ndarray], dtype: str, shards: int) -> None:
    import torch
    from safetensors.torch import save_file

    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    tensors = {n: torch.from_numpy(a).to(tdtype).contiguous() for n, a in weights.items()}
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        return
    names = list(tensors)
    groups = [names[i::shards] for i in range(shards)]  # every shard gets vision and LLM tensors
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        fname = f"model-{i:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in group}, str(path / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in group})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _dump(path / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


def write_checkpoint(path: str | Path, knobs: TinyInternVL = TinyInternVL(), seed: int = 0, shards: int = 1) -> Path:
    """Write a tiny random InternVL2 checkpoint in OpenGVLab's original layout; returns the directory."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = _write_tokenizer(path, knobs.llm)
    vocab_size = knobs.vocab_size or -(-tok.get_vocab_size() // 16) * 16  # padded, as real checkpoints are
    config = _chat_config(knobs, vocab_size, tok)
    _dump(path / "config.json", config)
    llm = config["llm_config"]
    _dump(path / "generation_config.json", {"_from_model_config": True, "bos_token_id": llm["bos_token_id"],
                                            "eos_token_id": llm["eos_token_id"], "transformers_version": "4.37.2"})
    _write_safetensors(path, original_weights(knobs, vocab_size, seed), knobs.dtype, shards)
    return path


# ----------------------------------------------------------------------------- reference model

# Renames from transformers' convert_internvl_weights_to_hf.py, anchored and applied once each.
VISION_RULES = (
    (r"^vision_model\.embeddings\.class_embedding$", "model.vision_tower.embeddings.cls_token"),
    (r"^vision_model\.embeddings\.position_embedding$", "model.vision_tower.embeddings.position_embeddings"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "model.vision_tower.embeddings.patch_embeddings.projection."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.ls(\d)$", r"model.vision_tower.encoder.layer.\1.lambda_\2"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.norm1\.", r"model.vision_tower.encoder.layer.\1.layernorm_before."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.norm2\.", r"model.vision_tower.encoder.layer.\1.layernorm_after."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.attn\.proj\.", r"model.vision_tower.encoder.layer.\1.attention.projection_layer."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.attn\.(q_norm|k_norm)\.", r"model.vision_tower.encoder.layer.\1.attention.\2."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.", r"model.vision_tower.encoder.layer.\1.mlp.\2."),
)
PROJECTOR_RULES = (
    (r"^mlp1\.0\.", "model.multi_modal_projector.layer_norm."),
    (r"^mlp1\.1\.", "model.multi_modal_projector.linear_1."),
    (r"^mlp1\.3\.", "model.multi_modal_projector.linear_2."),
)
QWEN2_RULES = (
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
)
INTERNLM2_RULES = (
    (r"^language_model\.model\.tok_embeddings\.", "model.language_model.embed_tokens."),
    (r"^language_model\.model\.layers\.(\d+)\.attention\.wo\.", r"model.language_model.layers.\1.self_attn.o_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.feed_forward\.w1\.", r"model.language_model.layers.\1.mlp.gate_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.feed_forward\.w3\.", r"model.language_model.layers.\1.mlp.up_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.feed_forward\.w2\.", r"model.language_model.layers.\1.mlp.down_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.attention_norm\.", r"model.language_model.layers.\1.input_layernorm."),
    (r"^language_model\.model\.layers\.(\d+)\.ffn_norm\.", r"model.language_model.layers.\1.post_attention_layernorm."),
    (r"^language_model\.model\.norm\.", "model.language_model.norm."),
    (r"^language_model\.output\.", "lm_head."),
)
_VISION_QKV = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
_INTERNLM2_WQKV = re.compile(r"^language_model\.model\.layers\.(\d+)\.attention\.wqkv\.weight$")


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json as a dict, every tensor as float32 numpy under its upstream name); reads shards too."""
    from safetensors.torch import load_file

    path = Path(path)
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    weights = {}
    for fname in files:
        weights.update({n: t.float().numpy() for n, t in load_file(str(path / fname)).items()})
    return config, weights


def split_vision_qkv(qkv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upstream reshapes qkv output as (3, heads, head_dim): q, k, v are the three row blocks."""
    return tuple(np.split(qkv, 3, axis=0))


def split_internlm2_wqkv(wqkv: np.ndarray, num_heads: int, num_kv_heads: int) -> tuple[np.ndarray, ...]:
    """Rows are grouped per kv head as (kv_heads, groups + 2, head_dim): the queries of the group, then k, then v."""
    groups = num_heads // num_kv_heads
    head_dim = wqkv.shape[0] // (num_heads + 2 * num_kv_heads)
    g = wqkv.reshape(num_kv_heads, groups + 2, head_dim, wqkv.shape[-1])  # 'b q (h gs d) -> b q h gs d'
    q = g[:, :groups].reshape(num_heads * head_dim, -1)
    return q, g[:, -2].reshape(num_kv_heads * head_dim, -1), g[:, -1].reshape(num_kv_heads * head_dim, -1)


def _rename(name: str, rules) -> str | None:
    for pattern, replacement in rules:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


def to_transformers_state_dict(config: dict, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map upstream names to InternVLForConditionalGeneration's; fused q/k/v are split. Unknown names raise."""
    llm = config["llm_config"]
    internlm2 = llm["architectures"][0] == "InternLM2ForCausalLM"
    rules = VISION_RULES + PROJECTOR_RULES + (INTERNLM2_RULES if internlm2 else QWEN2_RULES)
    out = {}
    for name, value in weights.items():
        if m := _VISION_QKV.match(name):
            prefix = f"model.vision_tower.encoder.layer.{m[1]}.attention."
            out.update({f"{prefix}{p}_proj.{m[2]}": t for p, t in zip("qkv", split_vision_qkv(value))})
        elif internlm2 and (m := _INTERNLM2_WQKV.match(name)):
            parts = split_internlm2_wqkv(value, llm["num_attention_heads"], llm["num_key_value_heads"])
            prefix = f"model.language_model.layers.{m[1]}.self_attn."
            out.update({f"{prefix}{p}_proj.weight": t for p, t in zip("qkv", parts)})
        elif (new := _rename(name, rules)) is not None:
            out[new] = value
        else:
            raise KeyError(f"no rule maps upstream weight {name!r}")
    if "lm_head.weight" not in out:  # tied: upstream's lm_head is the embedding matrix
        out["lm_head.weight"] = out["model.language_model.embed_tokens.weight"]
    return out


def _text_config(llm: dict):
    from transformers import LlamaConfig, Qwen2Config

    if llm.get("rope_scaling") is not None:
        raise NotImplementedError("reference_model does not map rope_scaling; tiny checkpoints write none")
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
            "tie_word_embeddings", "bos_token_id", "eos_token_id")
    kwargs = {k: llm[k] for k in keys if k in llm}
    if llm["architectures"][0] == "InternLM2ForCausalLM":
        if llm.get("bias", True):  # InternLM2Config defaults bias to True
            raise NotImplementedError("reference_model maps InternLM2 only with bias: false")
        return LlamaConfig(**kwargs, attention_bias=False, mlp_bias=False,
                           head_dim=llm["hidden_size"] // llm["num_attention_heads"])
    return Qwen2Config(**kwargs, use_sliding_window=False)


def _vision_config_hf(vision: dict, image_size: int):
    from transformers import InternVLVisionConfig

    if image_size != vision["image_size"]:
        raise NotImplementedError("force_image_size differs from vision_config.image_size")
    return InternVLVisionConfig(
        hidden_size=vision["hidden_size"], num_attention_heads=vision["num_attention_heads"],
        num_hidden_layers=vision["num_hidden_layers"], intermediate_size=vision["intermediate_size"],
        image_size=vision["image_size"], patch_size=vision["patch_size"], hidden_act=vision["hidden_act"],
        layer_norm_eps=vision["layer_norm_eps"], norm_type=vision.get("norm_type", "rms_norm"),
        attention_bias=vision.get("qkv_bias", False), use_qk_norm=vision.get("qk_normalization", True),
        use_mean_pooling=True,  # no final norm: upstream's InternVisionModel has none
        use_absolute_position_embeddings=True,
    )


def image_context_token_id(path: str | Path) -> int:
    """The id of ``<IMG_CONTEXT>`` in the checkpoint's tokenizer.json."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(path) / "tokenizer.json")).token_to_id(IMG_CONTEXT)


def reference_config(path: str | Path):
    """config.json (upstream) → transformers.InternVLConfig with eager attention."""
    from transformers import InternVLConfig

    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    vision, llm = config["vision_config"], config["llm_config"]
    image_size = config.get("force_image_size") or vision["image_size"]
    hf = InternVLConfig(
        vision_config=_vision_config_hf(vision, image_size), text_config=_text_config(llm),
        image_token_id=image_context_token_id(path), downsample_ratio=config["downsample_ratio"],
        image_seq_length=int((image_size // vision["patch_size"]) ** 2 * config["downsample_ratio"] ** 2),
        projector_hidden_act="gelu", vision_feature_layer=config["select_layer"],
        vision_feature_select_strategy="default", tie_word_embeddings=llm["tie_word_embeddings"],
    )
    hf._attn_implementation = "eager"  # upstream's _naive_attn / eager attention
    return hf


def _pixel_shuffle_v1(x, scale_factor: float = 0.5):
    """Upstream pixel_shuffle with ps_version 'v1': the final (H, W) swap back is skipped."""
    n, w, h, c = x.size()
    x = x.view(n, w, int(h * scale_factor), int(c / scale_factor)).permute(0, 2, 1, 3).contiguous()
    return x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))


def reference_model(path: str | Path):
    """transformers.InternVLForConditionalGeneration (float32, eval, CPU) built from an upstream-layout checkpoint."""
    import torch
    from transformers import InternVLForConditionalGeneration

    config, weights = read_checkpoint(path)
    model = InternVLForConditionalGeneration(reference_config(path)).float().eval()
    state = {n: torch.from_numpy(np.ascontiguousarray(a)) for n, a in to_transformers_state_dict(config, weights).items()}
    model.load_state_dict(state, strict=True)
    if config.get("ps_version", "v1") == "v1":  # upstream's default is v1
        model.model.pixel_shuffle = _pixel_shuffle_v1  # this instance only
    return model


def reference_logits(model, input_ids: Sequence[int], pixel_values: np.ndarray | None = None,
                     all_positions: bool = False) -> np.ndarray:
    """Float32 logits (vocab,) at the last position, or (T, vocab) with all_positions; one sequence."""
    import torch

    ids = torch.tensor([list(input_ids)], dtype=torch.long)
    pv = None if pixel_values is None else torch.from_numpy(np.asarray(pixel_values, dtype=np.float32))
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pv, attention_mask=torch.ones_like(ids)).logits[0]
    return (logits if all_positions else logits[-1]).float().numpy()


def reference_greedy(model, input_ids: Sequence[int], pixel_values: np.ndarray | None,
                     max_new_tokens: int, eos_token_id: int | Sequence[int], with_logits: bool = False):
    """Greedy ids after the prompt via model.generate (KV cache); ends with the eos id when it stopped on one.
    with_logits: (ids, (steps, vocab) float32 logits each id was chosen from)."""
    import torch

    ids = torch.tensor([list(input_ids)], dtype=torch.long)
    images = {} if pixel_values is None else {"pixel_values": torch.from_numpy(np.asarray(pixel_values, dtype=np.float32))}
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **images, do_sample=False,
                             max_new_tokens=max_new_tokens, min_new_tokens=0, eos_token_id=eos, pad_token_id=eos[0],
                             num_beams=1, repetition_penalty=1.0, return_dict_in_generate=True, output_logits=True)
    tokens = out.sequences[0, ids.shape[1]:].tolist()
    return (tokens, torch.cat(out.logits).float().numpy()) if with_logits else tokens


# ----------------------------------------------------------------------------- image preprocessing


def _find_closest_aspect_ratio(aspect_ratio: float, target_ratios, width: int, height: int, image_size: int):
    """Upstream find_closest_aspect_ratio: on a tie, a later (larger) grid wins while the image area exceeds half of it."""
    best_ratio_diff, best_ratio = float("inf"), (1, 1)
    area = width * height
    for ratio in target_ratios:
        ratio_diff = abs(aspect_ratio - ratio[0] / ratio[1])
        if ratio_diff < best_ratio_diff:
            best_ratio_diff, best_ratio = ratio_diff, ratio
        elif ratio_diff == best_ratio_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best_ratio = ratio
    return best_ratio


def upstream_grid(width: int, height: int, image_size: int, min_num: int, max_num: int) -> tuple[int, int]:
    """(columns, rows) upstream's dynamic_preprocess picks; candidates are a *set* sorted by tile count."""
    target_ratios = set(
        (i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
        if i * j <= max_num and i * j >= min_num
    )
    target_ratios = sorted(target_ratios, key=lambda x: x[0] * x[1])  # ties keep the set's iteration order
    return _find_closest_aspect_ratio(width / height, target_ratios, width, height, image_size)


def upstream_tiles(image: Image.Image, image_size: int, min_num: int, max_num: int, use_thumbnail: bool) -> list[Image.Image]:
    """Upstream dynamic_preprocess: resize to the grid (PIL's default filter, BICUBIC), crop row-major, maybe a thumbnail."""
    cols, rows = upstream_grid(image.width, image.height, image_size, min_num, max_num)
    resized = image.resize((image_size * cols, image_size * rows))
    tiles = [resized.crop(((i % cols) * image_size, (i // cols) * image_size,
                           (i % cols + 1) * image_size, (i // cols + 1) * image_size)) for i in range(cols * rows)]
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((image_size, image_size)))
    return tiles


def upstream_transform(tile: Image.Image, image_size: int) -> np.ndarray:
    """build_transform: RGB, T.Resize((S, S), BICUBIC) (= PIL resize), ToTensor, Normalize(ImageNet); (3, S, S) float32."""
    if tile.mode != "RGB":
        tile = tile.convert("RGB")
    tile = tile.resize((image_size, image_size), Image.Resampling.BICUBIC)  # torchvision's F_pil.resize
    x = np.asarray(tile, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
    return (x - mean) / std


def upstream_pixel_values(image: Image.Image, image_size: int, min_num: int, max_num: int, use_thumbnail: bool) -> np.ndarray:
    """The model card's load_image: RGB, dynamic_preprocess, build_transform, stacked to (N, 3, S, S) float32."""
    tiles = upstream_tiles(image.convert("RGB"), image_size, min_num, max_num, use_thumbnail)
    return np.stack([upstream_transform(t, image_size) for t in tiles])


# ----------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class _Template:
    system_template: str
    system_message: str
    roles: tuple[str, str]
    sep: str


TEMPLATES = {
    "Hermes-2": _Template("<|im_start|>system\n{system_message}", SYSTEM_MESSAGE_V2,
                          ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>"),
    "internlm2-chat": _Template("<|im_start|>system\n{system_message}", SYSTEM_MESSAGE_V2,
                                ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>"),
    "phi3-chat": _Template("<|system|>\n{system_message}", SYSTEM_MESSAGE_V2,
                           ("<|user|>\n", "<|assistant|>\n"), "<|end|>"),
    "internvl2_5": _Template("<|im_start|>system\n{system_message}", SYSTEM_MESSAGE_V2_5,
                             ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>\n"),
}


def _mpt_prompt(t: _Template, messages: list[tuple[str, str | None]]) -> str:
    """Conversation.get_prompt for SeparatorStyle.MPT (an empty message counts as none, as upstream's `if message:`)."""
    ret = t.system_template.format(system_message=t.system_message) + t.sep
    for role, message in messages:
        ret += role + message + t.sep if message else role
    return ret


def upstream_prompt(question: str, template: str, num_patches_list: Sequence[int], num_image_token: int,
                    history: Sequence[tuple[str, str]] | None = None) -> str:
    """InternVLChatModel.chat()'s query: `<image>\\n` prefix only when history is None and there are images;
    each `<image>` in turn becomes <img> + <IMG_CONTEXT> * num_image_token * num_patches + </img>."""
    t = TEMPLATES[template]
    if history is None and num_patches_list and "<image>" not in question:
        question = "<image>\n" + question
    messages = [m for q, a in (history or ()) for m in ((t.roles[0], q), (t.roles[1], a))]
    query = _mpt_prompt(t, messages + [(t.roles[0], question), (t.roles[1], None)])
    for num_patches in num_patches_list:
        query = query.replace("<image>", IMG_START + IMG_CONTEXT * num_image_token * num_patches + IMG_END, 1)
    return query


def upstream_multi_image_question(question: str, n: int) -> str:
    """The model card's multi-image convention: 'Image-1: <image>\\nImage-2: <image>\\n' + question."""
    return "".join(f"Image-{i}: <image>\n" for i in range(1, n + 1)) + question


def upstream_eos_token(template: str) -> str:
    """The stop token chat() uses: convert_tokens_to_ids(template.sep.strip())."""
    return TEMPLATES[template].sep.strip()


def upstream_prompt_ids(path: str | Path, prompt: str) -> list[int]:
    """tokenizer(query).input_ids as chat() gets them, via AutoTokenizer (adds <s> for InternLM2)."""
    from transformers import AutoTokenizer

    return list(AutoTokenizer.from_pretrained(str(path))(prompt)["input_ids"])
