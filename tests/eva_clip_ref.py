"""Test-side oracle for EVA-CLIP: a tiny random EVA02-CLIP built by open_clip (its timm EVA02 vision tower, an
OpenAI-CLIP-style text tower), saved in the layout of timm/eva02_*_clip_224.merged2b_* (open_clip_config.json,
open_clip_model.safetensors, the CLIP BPE tokenizer files), and open_clip's own model, tokenizer and preprocess.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

from torchvision_cpu import declare_missing_ops

# The tiny vision tower: timm's eva02_base_patch16_clip_224 at test size (its ref_feat_shape of 16 stays, so
# the rotary grid is rescaled from 4x4 patches as EVA does for any grid but the reference one).
TINY_TOWER = "eva02_tiny_test_clip_32"
TINY_TOWER_ARGS = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)
TINY_TEXT = dict(context_length=77, vocab_size=49408, width=32, heads=4, layers=2)
EVA_MEAN, EVA_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def import_open_clip():
    """open_clip, with the tiny EVA02 tower registered in timm."""
    declare_missing_ops()  # conftest did it already; here for a module imported on its own
    import open_clip
    import timm
    from timm.models import register_model
    from timm.models.eva import eva02_base_patch16_clip_224

    if not timm.is_model(TINY_TOWER):
        def tiny(pretrained: bool = False, **kwargs):
            return eva02_base_patch16_clip_224(pretrained=False, **(TINY_TOWER_ARGS | kwargs))

        tiny.__name__ = TINY_TOWER
        register_model(tiny)
    return open_clip


def tiny_tower_config():
    """mix's description of the tiny tower (what its table holds for the published towers)."""
    from mixcli.models.eva_clip.config import EvaVisionConfig

    a = TINY_TOWER_ARGS
    return EvaVisionConfig(width=a["embed_dim"], layers=a["depth"], heads=a["num_heads"], patch_size=a["patch_size"],
                           image_size=a["img_size"], ref_grid=16)  # fmt: skip


def write_bpe_tokenizer(folder: Path) -> None:
    """vocab.json and merges.txt of open_clip's own BPE file (bpe_simple_vocab_16e6), as the hub repos ship them."""
    import_open_clip()
    import open_clip.tokenizer as oc_tok

    lines = gzip.open(oc_tok.default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(oc_tok.bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}  # fmt: skip
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def write_eva_clip(folder: Path, seed: int = 0, preprocess: dict | None = None, pickle: bool = False) -> Path:
    """A tiny timm/eva02_*_clip folder written by open_clip: random weights (biases and norms too, so every
    tensor matters), logit_scale at log(10)."""
    open_clip = import_open_clip()
    import torch
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = {"embed_dim": 16, "vision_cfg": {"image_size": TINY_TOWER_ARGS["img_size"],
                 "timm_model_name": TINY_TOWER, "timm_model_pretrained": False, "timm_pool": "token",
                 "timm_proj": None}, "text_cfg": TINY_TEXT, "custom_text": True}  # fmt: skip
    torch.manual_seed(seed)
    model = open_clip.CustomTextCLIP(**{k: v for k, v in model_cfg.items() if k != "custom_text"}).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "logit_scale":
                p.add_(torch.randn_like(p) * 0.05)
        model.logit_scale.fill_(math.log(10.0))
    model.visual.image_mean, model.visual.image_std = EVA_MEAN, EVA_STD
    model.visual.preprocess_cfg = preprocess or {}
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    if pickle:
        torch.save(tensors, folder / "open_clip_pytorch_model.bin")
    else:
        save_file(tensors, str(folder / "open_clip_model.safetensors"))
    save_config_for_hf(model, folder / "open_clip_config.json", model_cfg)
    write_bpe_tokenizer(folder)
    return folder


def eva_clip_reference(folder: Path):
    """open_clip's model, tokenizer and eval preprocess of a folder (local-dir: as hf-hub: reads it)."""
    open_clip = import_open_clip()
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    return model.eval(), open_clip.get_tokenizer(f"local-dir:{folder}"), preprocess
