"""Chinese-CLIP (OFA-Sys/chinese-clip-*, transformers' ChineseCLIPModel layout) in Paddle: a BERT text tower
pooled at [CLS] beside CLIP's vision tower. BERT's blocks are the shared post-norm ViT block under renamed keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import paddle
from paddle import nn

from ...configs import Config
from ...layers import build_for_inference
from ...layers.linear import Linear
from ...layers.norm import LayerNorm
from ...layers.vit import CLIP_NAMES, ViTEncoder, ViTSpec
from ...weights import open_checkpoint, rename
from ..clip.config import CLIPVisionConfig, sub_config
from ..clip.model import ContrastiveModel
from ..clip.processing import CLIP_DEFAULTS, ImageProcessor
from ..clip.vision import PooledVisionTower
from .tokenizer import WordPieceTokenizer


@dataclass
class BertConfig(Config):
    """ChineseCLIPTextConfig's fields."""

    vocab_size: int = 30522
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12


@dataclass
class ChineseCLIPConfig(Config):
    text: BertConfig = field(default_factory=BertConfig)
    vision: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    projection_dim: int = 512

    @classmethod
    def from_dict(cls, data: Mapping, **overrides) -> "ChineseCLIPConfig":
        return cls(BertConfig.from_dict(sub_config(data, "text")), CLIPVisionConfig.from_dict(sub_config(data, "vision")),
                   int(data.get("projection_dim") or 512), **overrides)  # fmt: skip


class BertEmbeddings(nn.Layer):
    """word + position + token-type (all type 0) embeddings, then LayerNorm."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        t = input_ids.shape[-1]
        x = self.word_embeddings(input_ids) + self.position_embeddings.weight[:t] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class BertModel(nn.Layer):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        spec = ViTSpec(cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, act=cfg.hidden_act,
                       eps=cfg.layer_norm_eps, post_norm=True, names=CLIP_NAMES)  # fmt: skip
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = ViTEncoder(spec, cfg.num_hidden_layers)

    def forward(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        """(B, T) unpadded ids -> (B, T, H)."""
        return self.encoder(self.embeddings(input_ids))


class ChineseCLIPNet(nn.Layer):
    def __init__(self, cfg: ChineseCLIPConfig):
        super().__init__()
        self.config = cfg
        self.text_model = BertModel(cfg.text)
        self.vision_model = PooledVisionTower(cfg.vision, clip=True)
        self.text_projection = Linear(cfg.text.hidden_size, cfg.projection_dim, bias_attr=False)
        self.visual_projection = Linear(cfg.vision.hidden_size, cfg.projection_dim, bias_attr=False)
        self.logit_scale = self.create_parameter([])

    def image_features(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        return self.visual_projection(self.vision_model.pooled(pixel_values))

    def text_features(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        return self.text_projection(self.text_model(input_ids)[:, 0])  # [CLS]


class ChineseCLIP(ContrastiveModel):
    family = "Chinese-CLIP"

    def text_features(self, texts: list[str]) -> paddle.Tensor:
        """Texts batched by token count, so no padding (and no attention mask) enters BERT's attention."""
        ids = self.tokenizer(texts)
        out: list = [None] * len(ids)
        for length in sorted({len(i) for i in ids}):
            rows = [r for r, i in enumerate(ids) if len(i) == length]
            feats = self.net.text_features(paddle.to_tensor(np.array([ids[r] for r in rows], dtype=np.int64)))
            for k, r in enumerate(rows):
                out[r] = feats[k]
        return paddle.stack(out)


LAYER = r"^text_model\.encoder\.layer\.(\d+)\."
NAME_RULES = [
    (r"^(text_model|vision_model)\.embeddings\.(position_ids|token_type_ids)$", None),
    (r"^text_model\.pooler\.", None),  # ChineseCLIPModel builds its BERT without the pooler
    (LAYER + r"attention\.self\.query\.", r"text_model.encoder.layers.\1.self_attn.q_proj."),
    (LAYER + r"attention\.self\.key\.", r"text_model.encoder.layers.\1.self_attn.k_proj."),
    (LAYER + r"attention\.self\.value\.", r"text_model.encoder.layers.\1.self_attn.v_proj."),
    (LAYER + r"attention\.output\.dense\.", r"text_model.encoder.layers.\1.self_attn.out_proj."),
    (LAYER + r"attention\.output\.LayerNorm\.", r"text_model.encoder.layers.\1.layer_norm1."),
    (LAYER + r"intermediate\.dense\.", r"text_model.encoder.layers.\1.mlp.fc1."),
    (LAYER + r"output\.dense\.", r"text_model.encoder.layers.\1.mlp.fc2."),
    (LAYER + r"output\.LayerNorm\.", r"text_model.encoder.layers.\1.layer_norm2."),
]


def sanitize(weights: Mapping) -> Mapping:
    """Checkpoint names (BERT's) -> this module's names. Pure and idempotent."""
    return rename(weights, NAME_RULES)


def load(path: Path, config: dict, dtype: str = "float32", allow_pickle: bool = False) -> ChineseCLIP:
    cfg = ChineseCLIPConfig.from_dict(config)
    weights = sanitize(open_checkpoint(path, allow_pickle=allow_pickle))
    net = build_for_inference(lambda: ChineseCLIPNet(cfg), weights, dtype)
    tokenizer = WordPieceTokenizer.from_dir(path, cfg.text.max_position_embeddings)
    return ChineseCLIP(net, tokenizer, ImageProcessor.from_dir(path, CLIP_DEFAULTS), path)
