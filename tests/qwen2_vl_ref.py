"""Test-side oracle for the Qwen2-VL port: tiny checkpoints in Qwen's published layout, transformers as the reference.

``write_checkpoint`` writes what ``Qwen/Qwen2-VL-2B-Instruct`` publishes: a flat ``config.json``
(``Qwen2VLForConditionalGeneration`` / ``qwen2_vl``, text fields at the top, ``vision_config``
with ``depth``/``embed_dim``/``num_heads``/``in_chans``, ``rope_scaling`` with ``mrope_section``),
``model.safetensors`` under the published names (``visual.*``, ``model.*``, ``lm_head.*``),
``preprocessor_config.json`` (``Qwen2VLImageProcessor`` with min/max pixels), a tiny byte-level
BPE ``tokenizer.json`` with Qwen2-VL's special tokens, ``tokenizer_config.json`` and
``chat_template.json`` holding the Instruct checkpoints' chat template.

``reference_model`` loads the folder with ``Qwen2VLForConditionalGeneration.from_pretrained``
(transformers 5 maps the published names onto ``model.language_model`` / ``model.visual``);
``reference_inputs`` runs ``Qwen2VLProcessor`` with the slow (PIL) image processor.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from internvl_ref import QWEN2_PRETOKENIZE_REGEX, _dump, _Init, _write_safetensors

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
# Qwen/Qwen2-VL-2B-Instruct chat_template.json.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content"
    " or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video'"
    " or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
_CORPUS = (
    "You are a helpful assistant.",
    "Describe the image in detail.",
    "What is in the picture? Please describe it briefly.",
    "Compare the two images. What happens in the video?",
    "A cat is sitting on a red chair next to the window.",
    "The quick brown fox jumps over the lazy dog.",
    "system user assistant\nsystem user assistant\n",
    "The chart shows the numbers 1, 2, 3, 10, 42 and 100.",
)


@dataclass(frozen=True)
class TinyQwen2VL:
    """Knobs of a tiny random Qwen2-VL checkpoint; names follow the published config."""

    hidden_size: int = 64
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    num_hidden_layers: int = 2
    intermediate_size: int = 96
    mrope_section: tuple = (2, 3, 3)  # sums to head_dim / 2
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    depth: int = 2
    embed_dim: int = 32
    num_heads: int = 2
    mlp_ratio: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 16
    qwen2_5: bool = False  # Qwen2.5-VL: RMSNorm + SwiGLU vision blocks, window attention, timed video positions
    window_size: int = 56  # 2 merged units a side: several windows per image
    fullatt_block_indexes: tuple = (1,)
    tokens_per_second: int = 3
    vocab_size: int | None = None  # default: the tokenizer's size padded to 16; benchmarks set the real one


def _write_tokenizer(path: Path):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=360, show_progress=False, initial_alphabet=alphabet)
    tok.train_from_iterator(list(_CORPUS) * 2, trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(path / "tokenizer.json"))
    added = {
        str(i): {"content": t.content, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": True}
        for i, t in sorted(tok.get_added_tokens_decoder().items())
    }
    _dump(path / "tokenizer_config.json", {
        "tokenizer_class": "Qwen2Tokenizer", "add_prefix_space": False, "errors": "replace",
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "added_tokens_decoder": added, "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "clean_up_tokenization_spaces": False, "model_max_length": 32768, "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    })
    _dump(path / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    return tok


def _config(k: TinyQwen2VL, vocab: int, tok) -> dict:
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
        "vocab_size": vocab, "hidden_size": k.hidden_size, "intermediate_size": k.intermediate_size,
        "num_hidden_layers": k.num_hidden_layers, "num_attention_heads": k.num_attention_heads,
        "num_key_value_heads": k.num_key_value_heads, "hidden_act": "silu", "rms_norm_eps": 1e-6,
        "max_position_embeddings": k.max_position_embeddings, "rope_theta": k.rope_theta,
        "rope_scaling": {"type": "mrope", "mrope_section": list(k.mrope_section)},
        "tie_word_embeddings": k.tie_word_embeddings, "use_sliding_window": False, "sliding_window": 32768,
        "max_window_layers": k.num_hidden_layers, "attention_dropout": 0.0, "initializer_range": 0.02,
        "bos_token_id": tok.token_to_id("<|endoftext|>"), "eos_token_id": tok.token_to_id("<|im_end|>"),
        "vision_start_token_id": tok.token_to_id("<|vision_start|>"),
        "vision_end_token_id": tok.token_to_id("<|vision_end|>"),
        "vision_token_id": tok.token_to_id("<|vision_pad|>"),
        "image_token_id": tok.token_to_id("<|image_pad|>"), "video_token_id": tok.token_to_id("<|video_pad|>"),
        "torch_dtype": "float32", "transformers_version": "4.41.2",
        "vision_config": _vision_config(k),
    } | ({"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl"} if k.qwen2_5 else {})


def _vision_config(k: TinyQwen2VL) -> dict:
    if k.qwen2_5:  # Qwen/Qwen2.5-VL-3B-Instruct's vision_config shape
        return {
            "depth": k.depth, "hidden_act": "silu", "hidden_size": k.embed_dim,
            "intermediate_size": k.embed_dim * k.mlp_ratio,
            "num_heads": k.num_heads, "in_chans": 3, "out_hidden_size": k.hidden_size, "patch_size": 14,
            "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": k.window_size,
            "fullatt_block_indexes": list(k.fullatt_block_indexes), "tokens_per_second": k.tokens_per_second,
            "temporal_patch_size": 2,
        }
    return {
        "depth": k.depth, "embed_dim": k.embed_dim, "mlp_ratio": k.mlp_ratio, "num_heads": k.num_heads,
        "in_chans": 3, "hidden_size": k.hidden_size, "patch_size": 14, "spatial_merge_size": 2,
        "spatial_patch_size": 14, "temporal_patch_size": 2,
    }


def _vision_block(k: TinyQwen2VL, r: _Init, p: str) -> dict[str, np.ndarray]:
    e, m = k.embed_dim, k.embed_dim * k.mlp_ratio
    out = {
        p + "norm1.weight": r.norm(e), p + "norm2.weight": r.norm(e),
        p + "attn.qkv.weight": r.normal(3 * e, e, std=e**-0.5), p + "attn.qkv.bias": r.normal(3 * e, std=0.05),
        p + "attn.proj.weight": r.normal(e, e, std=e**-0.5), p + "attn.proj.bias": r.normal(e, std=0.05),
    }
    if k.qwen2_5:
        for name, (n_out, n_in) in {"gate_proj": (m, e), "up_proj": (m, e), "down_proj": (e, m)}.items():
            out[f"{p}mlp.{name}.weight"] = r.normal(n_out, n_in, std=n_in**-0.5)
            out[f"{p}mlp.{name}.bias"] = r.normal(n_out, std=0.05)
        return out
    return out | {
        p + "norm1.bias": r.normal(e, std=0.05), p + "norm2.bias": r.normal(e, std=0.05),
        p + "mlp.fc1.weight": r.normal(m, e, std=e**-0.5), p + "mlp.fc1.bias": r.normal(m, std=0.05),
        p + "mlp.fc2.weight": r.normal(e, m, std=m**-0.5), p + "mlp.fc2.bias": r.normal(e, std=0.05),
    }


def _weights(k: TinyQwen2VL, vocab: int, seed: int) -> dict[str, np.ndarray]:
    r = _Init(seed)
    e, w, hd = k.embed_dim, k.embed_dim * 4, k.hidden_size // k.num_attention_heads
    out = {"visual.patch_embed.proj.weight": r.normal(e, 3, 2, 14, 14, std=0.02)}
    for i in range(k.depth):
        out.update(_vision_block(k, r, f"visual.blocks.{i}."))
    out.update({
        "visual.merger.ln_q.weight": r.norm(e),
        "visual.merger.mlp.0.weight": r.normal(w, w, std=w**-0.5), "visual.merger.mlp.0.bias": r.normal(w, std=0.05),
        "visual.merger.mlp.2.weight": r.normal(k.hidden_size, w, std=w**-0.5),
        "visual.merger.mlp.2.bias": r.normal(k.hidden_size, std=0.05),
        **({} if k.qwen2_5 else {"visual.merger.ln_q.bias": r.normal(e, std=0.05)}),
        "model.embed_tokens.weight": r.normal(vocab, k.hidden_size, std=1.0),
        "model.norm.weight": r.norm(k.hidden_size),
    })
    h, q, kv = k.hidden_size, k.num_attention_heads * hd, k.num_key_value_heads * hd
    for i in range(k.num_hidden_layers):
        p = f"model.layers.{i}."
        out.update({
            p + "input_layernorm.weight": r.norm(h), p + "post_attention_layernorm.weight": r.norm(h),
            p + "self_attn.q_proj.weight": r.normal(q, h, std=h**-0.5), p + "self_attn.q_proj.bias": r.normal(q, std=0.1),
            p + "self_attn.k_proj.weight": r.normal(kv, h, std=h**-0.5),
            p + "self_attn.k_proj.bias": r.normal(kv, std=0.1),
            p + "self_attn.v_proj.weight": r.normal(kv, h, std=h**-0.5),
            p + "self_attn.v_proj.bias": r.normal(kv, std=0.1),
            p + "self_attn.o_proj.weight": r.normal(h, q, std=q**-0.5),
            p + "mlp.gate_proj.weight": r.normal(k.intermediate_size, h, std=h**-0.5),
            p + "mlp.up_proj.weight": r.normal(k.intermediate_size, h, std=h**-0.5),
            p + "mlp.down_proj.weight": r.normal(h, k.intermediate_size, std=k.intermediate_size**-0.5),
        })
    if not k.tie_word_embeddings:
        out["lm_head.weight"] = r.normal(vocab, h, std=h**-0.5)
    return out


def write_checkpoint(path: str | Path, knobs: TinyQwen2VL = TinyQwen2VL(), seed: int = 0) -> Path:
    """Write a tiny random Qwen2-VL checkpoint in the published layout; returns the directory."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = _write_tokenizer(path)
    vocab = knobs.vocab_size or -(-tok.get_vocab_size() // 16) * 16
    config = _config(knobs, vocab, tok)
    _dump(path / "config.json", config)
    _dump(path / "generation_config.json", {"bos_token_id": config["bos_token_id"],
                                            "eos_token_id": [config["eos_token_id"], config["bos_token_id"]]})
    _dump(path / "preprocessor_config.json", {
        "min_pixels": knobs.min_pixels, "max_pixels": knobs.max_pixels, "patch_size": 14, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
    })
    _write_safetensors(path, _weights(knobs, vocab, seed), "float32", 1)
    return path


# ----------------------------------------------------------------------------- reference


def reference_model(path: str | Path):
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    qwen2_5 = json.loads((Path(path) / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    cls = Qwen2_5_VLForConditionalGeneration if qwen2_5 else Qwen2VLForConditionalGeneration
    return cls.from_pretrained(str(path), dtype="float32", attn_implementation="eager").eval()


def reference_processor(path: str | Path, max_pixels: int | None = None):
    """(slow PIL Qwen2VLImageProcessor, the checkpoint's tokenizer). Qwen2VLProcessor itself needs
    torchvision (its video processor), which the test environment lacks; ``reference_inputs``
    transcribes its text side: pad expansion by grid product / merge² and mm_token_type_ids."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    config = json.loads((Path(path) / "preprocessor_config.json").read_text())
    sizes = {"min_pixels": config["min_pixels"], "max_pixels": max_pixels or config["max_pixels"]}
    return Qwen2VLImageProcessorPil(**sizes), AutoTokenizer.from_pretrained(str(path))


def reference_inputs(processor, messages: list[dict], images=None, video: dict | None = None) -> dict:
    """input_ids, pixel_values, image_grid_thw and mm_token_type_ids as numpy, batch of one.

    ``video``: precomputed {"pixel_values_videos", "video_grid_thw"} (the torchvision video
    processor cannot run here); its tokens are expanded the same way."""
    image_processor, tokenizer = processor
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, chat_template=CHAT_TEMPLATE
    )
    out = {}
    if images:
        out.update({k: np.asarray(v) for k, v in image_processor(images=images, return_tensors="np").items()})
        text = _expand(text, "<|image_pad|>", out["image_grid_thw"])
    if video:
        out.update(video)
        text = _expand(text, "<|video_pad|>", video["video_grid_thw"])
    ids = np.array([tokenizer(text)["input_ids"]], dtype=np.int64)
    image_id, video_id = tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>"])
    types = np.where(ids == image_id, 1, np.where(ids == video_id, 2, 0)).astype(np.int64)
    return {"text": text, "input_ids": ids, "attention_mask": np.ones_like(ids), "mm_token_type_ids": types, **out}


def _expand(text: str, pad: str, grids: np.ndarray) -> str:
    """Upstream ProcessorMixin: each pad in turn becomes grid.prod() // merge_size**2 pads (merge 2)."""
    pieces = text.split(pad)
    out = pieces[0]
    for grid, piece in zip(grids, pieces[1:]):
        out += "<|placeholder|>" * (int(np.prod(grid)) // 4) + piece
    return out.replace("<|placeholder|>", pad)


def _torch_inputs(inputs: dict) -> dict:
    import torch

    return {k: torch.from_numpy(v) for k, v in inputs.items() if k != "text"}


def reference_logits(model, inputs: dict) -> np.ndarray:
    """(T, vocab) float32 logits of the prompt."""
    import torch

    with torch.no_grad():
        return model(**_torch_inputs(inputs)).logits[0].float().numpy()


def reference_greedy(model, inputs: dict, max_new_tokens: int, eos_token_id: int, with_logits: bool = False):
    """Greedy ids after the prompt via model.generate; ends with the eos id when it stopped on one.
    with_logits: (ids, (steps, vocab) float32 logits each id was chosen from)."""
    import torch

    with torch.no_grad():
        out = model.generate(**_torch_inputs(inputs), do_sample=False, max_new_tokens=max_new_tokens,
                             min_new_tokens=0, eos_token_id=[eos_token_id], pad_token_id=eos_token_id,
                             num_beams=1, repetition_penalty=1.0, return_dict_in_generate=True, output_logits=True)
    tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    return (tokens, torch.cat(out.logits).float().numpy()) if with_logits else tokens


# ----------------------------------------------------------------------------- video reference
# transformers' Qwen2VLVideoProcessor imports torchvision, which cannot be installed here, and
# qwen-vl-utils needs it too; the pieces below are transcribed from them and run the same torch ops.


def upstream_smart_nframes(ele: dict, total_frames: int, video_fps: float) -> int:
    """qwen-vl-utils' smart_nframes (QwenLM/Qwen3-VL, qwen_vl_utils/vision_process.py), transcribed."""
    factor = 2
    if "nframes" in ele:
        nframes = round(ele["nframes"] / factor) * factor
    else:
        fps = ele.get("fps", 2.0)
        min_frames = math.ceil(ele.get("min_frames", 4) / factor) * factor
        max_frames = math.floor(ele.get("max_frames", min(768, total_frames)) / factor) * factor
        nframes = total_frames / video_fps * fps
        nframes = min(min(max(nframes, min_frames), max_frames), total_frames)
        nframes = math.floor(nframes / factor) * factor
    if not (factor <= nframes <= total_frames):
        raise ValueError(f"nframes should in interval [{factor}, {total_frames}], but got {nframes}.")
    return nframes


def upstream_frame_indices(total_frames: int, nframes: int) -> list[int]:
    """qwen-vl-utils: torch.linspace(0, total_frames - 1, nframes).round().long()."""
    import torch

    return torch.linspace(0, total_frames - 1, nframes).round().long().tolist()


def upstream_video_size(height: int, width: int, num_frames: int, min_pixels: int = 128 * 28 * 28,
                        max_pixels: int = 768 * 28 * 28, max_video_tokens: int = 128000) -> tuple[int, int]:
    """Qwen2VLVideoProcessor.resize(cap_pixels_per_frame=True)'s target size (factor 28, temporal patch 2)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    total_pixels = int(max_video_tokens * 28 * 28 * 0.9)
    capped = max(min(max_pixels, total_pixels * 2 // num_frames), int(min_pixels * 1.05))
    return smart_resize(height, width, factor=28, min_pixels=min_pixels, max_pixels=capped)


def upstream_pixel_values_videos(video: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(pixel_values_videos, video_grid_thw) for uint8 (T, H, W, C) frames as Qwen2VLVideoProcessor
    builds them: tvF.resize (bicubic, antialias; on AVX2/AVX512 CPUs torchvision runs torch's native
    uint8 kernel, called directly here), the fused rescale + normalize, then its patchify."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).contiguous()[None]  # (1, T, C, H, W)
    if tuple(x.shape[-2:]) != tuple(size):
        frames = torch.nn.functional.interpolate(x[0], size=list(size), mode="bicubic", antialias=True)
        x = frames[None]
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]) * (1.0 / (1 / 255))
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]) * (1.0 / (1 / 255))
    x = (x.to(torch.float32) - mean[:, None, None]) / std[:, None, None]
    if pad := -x.shape[1] % 2:
        x = torch.cat((x, x[:, -1:].expand(-1, pad, -1, -1, -1)), dim=1)
    b, t, c, h, w = x.shape
    gt, gh, gw = t // 2, h // 14, w // 14
    patches = x.view(b, gt, 2, c, gh // 2, 2, 14, gw // 2, 2, 14).permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    flat = patches.reshape(b, gt * gh * gw, c * 2 * 14 * 14)
    return flat[0].numpy(), np.array([[gt, gh, gw]], dtype=np.int64)
