"""EVA02-CLIP (open_clip's CustomTextCLIP with a timm EVA02 tower) in Paddle, loaded from the files timm and
open_clip publish: open_clip_config.json, open_clip_model.safetensors (or open_clip_pytorch_model.bin), and the
CLIP BPE tokenizer (vocab.json + merges.txt)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import paddle
from paddle import nn

from ...diffusion.clip import CLIPTokenizer, eos_positions
from ...errors import CheckpointError
from ...layers import build_for_inference
from ...weights import open_checkpoint, rename
from ..clip.model import ContrastiveModel, tokenizer_folder
from .config import EvaCLIPConfig
from .processing import OpenCLIPImageProcessor
from .text import OpenCLIPText
from .vision import EvaVisionTower

# The weight files of an open_clip folder, in the order open_clip's factory prefers them.
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin")


class EvaCLIPNet(nn.Layer):
    """``visual`` (TimmModel.trunk), ``text`` and ``logit_scale``, under open_clip's names (renamed by NAME_RULES)."""

    def __init__(self, cfg: EvaCLIPConfig):
        super().__init__()
        self.config = cfg
        self.visual = EvaVisionTower(cfg.vision, cfg.embed_dim)
        self.text = OpenCLIPText(cfg.text, cfg.embed_dim)
        self.logit_scale = self.create_parameter([])

    def image_features(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        """(N, 3, S, S) -> (N, P), not normalised."""
        return self.visual(pixel_values)

    def text_features(self, input_ids: paddle.Tensor, eos_token_id: int) -> paddle.Tensor:
        """(B, T) -> (B, P) pooled at the end-of-text token (open_clip's argmax pooling: it is the highest id)."""
        return self.text(input_ids, eos_positions(input_ids, eos_token_id))


class EvaCLIP(ContrastiveModel):
    family = "EVA-CLIP"

    def text_features(self, texts: list[str]) -> paddle.Tensor:
        ids = paddle.to_tensor(self.tokenizer(texts))  # (B, 77), eot last before the padding
        eos = self.tokenizer.eos_id
        # Causal attention: the positions after the last pooled one change nothing that is pooled.
        length = int(eos_positions(ids, eos).max()) + 1
        return self.net.text_features(ids[:, :length], eos)


NAME_RULES = [
    (r"^visual\.trunk\.cls_token$", "visual.embeddings.class_embedding"),
    (r"^visual\.trunk\.pos_embed$", "visual.embeddings.position_embedding"),
    (r"^visual\.trunk\.patch_embed\.proj\.", "visual.embeddings.patch_embedding."),
    (r"^visual\.trunk\.", "visual."),
    (r"^text\.transformer\.resblocks\.", "text.transformer.layers."),
    (r"\.attn\.in_proj_weight$", ".attn.qkv.weight"),
    (r"\.attn\.in_proj_bias$", ".attn.qkv.bias"),
    (r"\.attn\.out_proj\.", ".attn.proj."),
    (r"\.mlp\.c_fc\.", ".mlp.fc1."),
    (r"\.mlp\.c_proj\.", ".mlp.fc2."),
    (r"^text\.attn_mask$", None),  # a non-persistent buffer some exports still carry
]


def sanitize(weights: Mapping) -> Mapping:
    """open_clip's names -> this module's names. Pure and idempotent."""
    return rename(weights, NAME_RULES)


def weight_file(path: Path) -> Path:
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"{path} has no open_clip weights ({', '.join(WEIGHT_FILES)})",
                          "re-download it: mix download MODEL")  # fmt: skip


def load(path: Path, config: dict, dtype: str = "float32", allow_pickle: bool = False) -> EvaCLIP:
    """An EVA02-CLIP folder in open_clip's layout; ``config`` is its open_clip_config.json."""
    cfg = EvaCLIPConfig.from_dict(config)
    weights = sanitize(open_checkpoint(weight_file(Path(path)), allow_pickle=allow_pickle))
    net = build_for_inference(lambda: EvaCLIPNet(cfg), weights, dtype)
    tokenizer = CLIPTokenizer.from_dir(tokenizer_folder(Path(path)))
    processor = OpenCLIPImageProcessor.from_config(config.get("preprocess_cfg") or {}, cfg.vision.image_size)
    return EvaCLIP(net, tokenizer, processor, path)
