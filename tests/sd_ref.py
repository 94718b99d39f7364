"""Test-side oracle for the diffusion port: tiny random Stable Diffusion pipelines in the diffusers layout.

``write_sd15`` / ``write_sdxl`` save what ``stable-diffusion-v1-5/stable-diffusion-v1-5`` and
``stabilityai/stable-diffusion-xl-base-1.0`` publish, at toy sizes: ``model_index.json``,
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` (``vocab.json``, ``merges.txt``,
``tokenizer_config.json``, ``special_tokens_map.json``), ``scheduler/scheduler_config.json``
(the published scheduler settings) and for SDXL ``text_encoder_2/`` and ``tokenizer_2/``
(padded with ``!`` as the published one is). Weights are diffusers' own random init through
``save_pretrained`` (safetensors), with ``variant="fp16"`` copies on request.

The CLIP vocabulary is made offline: the 256 byte-level symbols, each also with ``</w>``, a few
merges learnt from a small corpus, and ``<|startoftext|>`` / ``<|endoftext|>`` last, as in the
real vocabulary (the text encoders' legacy ``eos_token_id: 2`` pools at the highest id).

``reference_pipeline`` loads a folder with diffusers' ``StableDiffusionPipeline`` /
``StableDiffusionXLPipeline`` on CPU in float32.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
_CORPUS = (
    "a photo of a cat sitting on a red chair",
    "a painting of an astronaut riding a horse on the moon",
    "the quick brown fox jumps over the lazy dog",
    "blurry, low quality, watermark, text",
    "a watercolor landscape with mountains and a lake at sunset",
)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in CLIP's vocabulary order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _learn_merges(count: int) -> list[tuple[str, str]]:
    words = Counter(w for line in _CORPUS for w in line.lower().split())
    split = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges = []
    for _ in range(count):
        pairs = Counter()
        for w, n in words.items():
            for a, b in zip(split[w], split[w][1:]):
                pairs[a, b] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        for w in split:
            s, out, i = split[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            split[w] = out
    return merges


def write_tokenizer(folder: Path, pad_token: str = EOS, merges: int = 60) -> int:
    """A CLIP BPE tokenizer folder as published; returns its vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _bytes_to_unicode()
    vocab = symbols + [s + "</w>" for s in symbols]
    learnt = _learn_merges(merges)
    vocab += ["".join(m) for m in learnt]
    vocab += [BOS, EOS]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in learnt))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "errors": "replace", "add_prefix_space": False, "clean_up_tokenization_spaces": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return len(vocab)


def _text_config(vocab_size: int, hidden: int, layers: int, act: str, projection: int) -> dict:
    return dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2 + 5, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=77, hidden_act=act, layer_norm_eps=1e-5,
        projection_dim=projection, bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )


def _save(model, folder: Path, fp16: bool) -> None:
    if fp16:  # first, because save_pretrained also writes config.json (with its dtype)
        import copy

        import torch

        copy.deepcopy(model).to(torch.float16).save_pretrained(folder, safe_serialization=True, variant="fp16")
    model.save_pretrained(folder, safe_serialization=True)


def _vae(latent_channels: int = 4, scaling_factor: float = 0.18215):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], layers_per_block=1, norm_num_groups=32,
        sample_size=64, scaling_factor=scaling_factor,
    )


def write_sd15(folder: Path, *, seed: int = 0, fp16: bool = False, unet_kwargs: dict | None = None) -> Path:
    """A tiny SD1.5-shaped pipeline: conv-projection transformers, PNDM scheduler config, one CLIP encoder."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    folder = Path(folder)
    vocab = write_tokenizer(folder / "tokenizer")
    text = CLIPTextModel(CLIPTextConfig(**_text_config(vocab, 32, 3, "quick_gelu", 32))).eval()
    unet = UNet2DConditionModel(
        **{
            "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": (32, 64), "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 32,
            "attention_head_dim": 8, "norm_num_groups": 32, **(unet_kwargs or {}),
        }
    )
    _randomize(unet)
    _save(unet, folder / "unet", fp16)
    _save(_vae(), folder / "vae", fp16)
    _save(text, folder / "text_encoder", fp16)
    _write_scheduler(folder, SD15_SCHEDULER)
    _write_index(folder, "StableDiffusionPipeline", {
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None], "requires_safety_checker": False,
    })
    return folder


def write_sdxl(folder: Path, *, seed: int = 0, fp16: bool = False, unet_kwargs: dict | None = None) -> Path:
    """A tiny SDXL-shaped pipeline: linear projections, text_time conditioning, two CLIP encoders."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    folder = Path(folder)
    vocab = write_tokenizer(folder / "tokenizer")
    write_tokenizer(folder / "tokenizer_2", pad_token="!")
    text = CLIPTextModel(CLIPTextConfig(**_text_config(vocab, 32, 3, "quick_gelu", 32))).eval()
    text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_text_config(vocab, 32, 3, "gelu", 32))).eval()
    unet = UNet2DConditionModel(
        **{
            "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": (32, 64), "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "attention_head_dim": (2, 4),
            "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
            "transformer_layers_per_block": (1, 2), "projection_class_embeddings_input_dim": 6 * 8 + 32,
            "cross_attention_dim": 64, "norm_num_groups": 32, **(unet_kwargs or {}),
        }
    )
    _randomize(unet)
    _save(unet, folder / "unet", fp16)
    _save(_vae(scaling_factor=0.13025), folder / "vae", fp16)
    _save(text, folder / "text_encoder", fp16)
    _save(text_2, folder / "text_encoder_2", fp16)
    _write_scheduler(folder, SDXL_SCHEDULER)
    _write_index(folder, "StableDiffusionXLPipeline", {
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "force_zeros_for_empty_prompt": True,
    })
    return folder


def _randomize(model) -> None:
    """diffusers zero-initialises the UNet's output convolutions; random values make parity meaningful."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.abs().sum() == 0 and name.endswith(".weight") or name.startswith("conv_out"):
                param.normal_(0.0, 0.05)


def _write_scheduler(folder: Path, config: dict) -> None:
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "_diffusers_version": "0.42.1"}))


def _write_index(folder: Path, cls: str, parts: dict) -> None:
    (folder / "model_index.json").write_text(json.dumps({"_class_name": cls, "_diffusers_version": "0.42.1", **parts}, indent=2))


def reference_pipeline(folder: Path):
    """diffusers' own pipeline for a folder written above (CPU, float32)."""
    import diffusers

    index = json.loads((Path(folder) / "model_index.json").read_text())
    cls = getattr(diffusers, index["_class_name"])
    pipe = cls.from_pretrained(str(folder), safety_checker=None) if "XL" not in index["_class_name"] else cls.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe
