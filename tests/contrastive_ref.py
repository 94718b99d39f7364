"""Test-side oracle for the contrastive families: tiny random checkpoints written by transformers, laid out as
the published repos are (openai/clip-vit-*, google/siglip-*, OFA-Sys/chinese-clip-*), and their references.

``write_clip`` saves a CLIPModel with the old feature-extractor preprocessor_config.json (integer size and
crop_size), the legacy ``eos_token_id: 2`` text config, ``position_ids`` buffers among the weights, and the BPE
tokenizer files of sd_ref.write_tokenizer (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from sd_ref import write_tokenizer

CLIP_PREPROCESSOR = {
    "crop_size": 30, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 30,
}  # fmt: skip


def _with_buffers(folder: Path, buffers: dict[str, np.ndarray]) -> None:
    """Rewrite model.safetensors with the extra (buffer) tensors older transformers saved."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors")) | buffers
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _scaled_logits(model, value: float = math.log(100.0)) -> None:
    """Trained CLIPs have logit_scale at log(100); random cosines then give probabilities far from uniform."""
    with torch.no_grad():
        model.logit_scale.fill_(value)


def clip_config(vocab_size: int, **text) -> dict:
    text_config = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                       bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=16) | text  # fmt: skip
    vision_config = dict(hidden_size=24, intermediate_size=41, num_hidden_layers=2, num_attention_heads=4,
                         image_size=30, patch_size=6, hidden_act="quick_gelu", projection_dim=16)  # fmt: skip
    return dict(text_config=text_config, vision_config=vision_config, projection_dim=16)


def write_clip(folder: Path, seed: int = 0, **text) -> Path:
    """A tiny openai/clip-vit-* folder."""
    from transformers import CLIPConfig, CLIPModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(folder)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(**clip_config(vocab, **text))).eval()
    _scaled_logits(model, math.log(10.0))
    model.save_pretrained(str(folder))
    grid = (30 // 6) ** 2 + 1
    _with_buffers(folder, {"text_model.embeddings.position_ids": np.arange(77, dtype=np.int64)[None],
                           "vision_model.embeddings.position_ids": np.arange(grid, dtype=np.int64)[None]})
    (folder / "preprocessor_config.json").write_text(json.dumps(CLIP_PREPROCESSOR))
    return folder


def clip_reference(folder: Path):
    """transformers' CLIPModel, tokenizer and (PIL) image processor of a folder."""
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    return (CLIPModel.from_pretrained(str(folder)).eval(), CLIPTokenizer.from_pretrained(str(folder)),
            CLIPImageProcessorPil.from_pretrained(str(folder)))  # fmt: skip


# --- SigLIP -----------------------------------------------------------------------------------------

SIGLIP_CORPUS = (
    "a photo of a cat", "a photo of a dog", "the quick brown fox jumps over the lazy dog", "two cats on a sofa",
    "an astronaut riding a horse on the moon", "a watercolor landscape with mountains and a lake at sunset",
    "blurry low quality watermark text", "numbers 1234 and 3 14", "café naïve résumé",
)  # fmt: skip


def write_spiece(folder: Path, vocab_size: int = 120) -> None:
    """A tiny unigram spiece.model with SigLIP's piece layout (<pad> 0, </s> 1, <unk> 2)."""
    import io

    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SIGLIP_CORPUS * 10), model_writer=out, model_type="unigram", vocab_size=vocab_size,
        hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )  # fmt: skip
    (folder / "spiece.model").write_bytes(out.getvalue())


def write_siglip(folder: Path, seed: int = 0) -> Path:
    """A tiny google/siglip-* folder: spiece.model, a tokenizer_config.json naming only input_ids, the
    preprocessor_config.json of SiglipImageProcessor."""
    import sentencepiece as spm
    from transformers import SiglipConfig, SiglipModel

    folder.mkdir(parents=True, exist_ok=True)
    write_spiece(folder)
    vocab = spm.SentencePieceProcessor(model_file=str(folder / "spiece.model")).get_piece_size()
    special = {"eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        **special, "model_max_length": 16, "do_lower_case": True, "model_input_names": ["input_ids"],
        "tokenizer_class": "SiglipTokenizer", "additional_special_tokens": [], "sp_model_kwargs": {}}))  # fmt: skip
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    text = dict(vocab_size=vocab, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16, pad_token_id=1, eos_token_id=1, bos_token_id=None)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=41, num_hidden_layers=2, num_attention_heads=4, image_size=30,
                  patch_size=6)  # fmt: skip
    torch.manual_seed(seed)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-1.5)
    model.save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5], "resample": 3,
        "rescale_factor": 0.00392156862745098, "size": {"height": 30, "width": 30}}))  # fmt: skip
    return folder


def siglip_reference(folder: Path):
    from transformers import SiglipImageProcessorPil, SiglipModel, SiglipTokenizer

    return (SiglipModel.from_pretrained(str(folder)).eval(), SiglipTokenizer.from_pretrained(str(folder)),
            SiglipImageProcessorPil.from_pretrained(str(folder)))  # fmt: skip


# --- Chinese-CLIP -----------------------------------------------------------------------------------

WORDPIECE_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "dog", "the", "quick",
                   "brown", "fox", "##s", "##ing", "run", ",", ".", "!", "一", "只", "猫", "狗", "的", "照", "片",
                   "cafe", "naive", "##e", "1", "2", "3", "##4"]  # fmt: skip


def write_chinese_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny OFA-Sys/chinese-clip-* folder: vocab.txt only for the tokenizer, images squashed to S x S."""
    from transformers import ChineseCLIPConfig, ChineseCLIPModel

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in WORDPIECE_VOCAB), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True,
                                                              "model_max_length": 52}))  # fmt: skip
    text = dict(vocab_size=len(WORDPIECE_VOCAB), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=52)  # fmt: skip
    vision = dict(hidden_size=24, intermediate_size=41, num_hidden_layers=2, num_attention_heads=4, image_size=30,
                  patch_size=6)  # fmt: skip
    torch.manual_seed(seed)
    model = ChineseCLIPModel(ChineseCLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    _scaled_logits(model)
    model.save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 30, "do_center_crop": False, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "ChineseCLIPFeatureExtractor", "image_mean": CLIP_PREPROCESSOR["image_mean"],
        "image_std": CLIP_PREPROCESSOR["image_std"], "resample": 3, "size": {"height": 30, "width": 30}}))  # fmt: skip
    return folder


def chinese_clip_reference(folder: Path):
    from transformers import BertTokenizer, ChineseCLIPImageProcessorPil, ChineseCLIPModel

    return (ChineseCLIPModel.from_pretrained(str(folder)).eval(), BertTokenizer.from_pretrained(str(folder)),
            ChineseCLIPImageProcessorPil.from_pretrained(str(folder)))  # fmt: skip
