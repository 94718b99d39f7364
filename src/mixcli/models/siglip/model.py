"""SigLIP (transformers' SiglipModel layout) in Paddle: CLIP's blocks, non-causal text pooled at the last
position, the vision tower pooled by an attention-pooling (MAP) head, and sigmoid probabilities with a bias."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import paddle
from paddle import nn

from ...diffusion.clip import CLIPEmbeddings
from ...errors import CheckpointError
from ...layers import build_for_inference
from ...layers.attention import attention
from ...layers.linear import Linear
from ...layers.norm import LayerNorm
from ...layers.vit import MLP, ViTEncoder, ViTSpec
from ...weights import open_checkpoint, rename
from ..clip.model import ContrastiveModel
from ..clip.processing import SIGLIP_DEFAULTS, ImageProcessor
from ..clip.vision import PooledVisionTower
from .config import SiglipConfig
from .tokenizer import SiglipTokenizer


class PoolingAttention(nn.Layer):
    """torch's nn.MultiheadAttention (batch_first) as the MAP head holds it: in_proj_weight (3D, D), in_proj_bias,
    out_proj."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.in_proj_weight = self.create_parameter([3 * dim, dim])
        self.in_proj_bias = self.create_parameter([3 * dim], is_bias=True)
        self.out_proj = Linear(dim, dim)

    def forward(self, query: paddle.Tensor, x: paddle.Tensor) -> paddle.Tensor:
        """(N, 1, D) queries over (N, T, D) -> (N, 1, D)."""
        d = query.shape[-1]
        w, b = self.in_proj_weight, self.in_proj_bias
        q = paddle.matmul(query, w[:d], transpose_y=True) + b[:d]
        kv = paddle.matmul(x, w[d:], transpose_y=True) + b[d:]  # (N, T, 2D)
        k, v = kv[..., :d], kv[..., d:]
        n, t = x.shape[0], x.shape[1]
        out = attention(q.reshape([n, 1, self.heads, self.head_dim]), k.reshape([n, t, self.heads, self.head_dim]),
                        v.reshape([n, t, self.heads, self.head_dim]), self.head_dim**-0.5, token_major=True)  # fmt: skip
        return self.out_proj(out.reshape([n, 1, d]))


class PoolingHead(nn.Layer):
    """SiglipMultiheadAttentionPoolingHead: a learned probe attends over the tokens, then a residual MLP."""

    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden_size
        self.probe = self.create_parameter([1, 1, d])
        self.attention = PoolingAttention(d, cfg.num_attention_heads)
        self.layernorm = LayerNorm(d, cfg.layer_norm_eps)
        self.mlp = MLP(d, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """(N, T, D) -> (N, D)."""
        probe = self.probe.expand([x.shape[0], 1, x.shape[-1]]).astype(x.dtype)
        h = self.attention(probe, x)
        return (h + self.mlp(self.layernorm(h)))[:, 0]


class SiglipTextTransformer(nn.Layer):
    """`text_model.*`: embeddings, a non-causal encoder, final_layer_norm, head."""

    def __init__(self, cfg):
        super().__init__()
        spec = ViTSpec(cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, act=cfg.hidden_act,
                       eps=cfg.layer_norm_eps)  # fmt: skip
        self.embeddings = CLIPEmbeddings(cfg)
        self.encoder = ViTEncoder(spec, cfg.num_hidden_layers)
        self.final_layer_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.head = Linear(cfg.hidden_size, cfg.projection_size)

    def forward(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        """(B, T) -> (B, P): the last position's state (the padding is attended, as upstream), through head."""
        last = self.final_layer_norm(self.encoder(self.embeddings(input_ids)))
        return self.head(last[:, -1])


class SiglipNet(nn.Layer):
    def __init__(self, cfg: SiglipConfig):
        super().__init__()
        self.config = cfg
        self.text_model = SiglipTextTransformer(cfg.text)
        self.vision_model = PooledVisionTower(cfg.vision, clip=False, head=PoolingHead(cfg.vision))
        self.logit_scale = self.create_parameter([1])
        self.logit_bias = self.create_parameter([1])

    def image_features(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        return self.vision_model.pooled(pixel_values)


class Siglip(ContrastiveModel):
    family = "SigLIP"
    probability = "sigmoid"

    def text_features(self, texts: list[str]) -> paddle.Tensor:
        return self.net.text_model(paddle.to_tensor(self.tokenizer(texts)))


NAME_RULES = [(r"^(text_model|vision_model)\.embeddings\.position_ids$", None)]


def sanitize(weights: Mapping) -> Mapping:
    """Checkpoint names -> this module's names. Pure and idempotent."""
    return rename(weights, NAME_RULES)


def load(path: Path, config: dict, dtype: str = "float32", allow_pickle: bool = False) -> Siglip:
    cfg = SiglipConfig.from_dict(config)
    if not cfg.vision.vision_use_head:
        raise CheckpointError("this SigLIP vision tower has no pooling head, so it gives no image embedding",
                              "use a SiglipModel checkpoint (vision_use_head true)")  # fmt: skip
    weights = sanitize(open_checkpoint(path, allow_pickle=allow_pickle))
    net = build_for_inference(lambda: SiglipNet(cfg), weights, dtype)
    return Siglip(net, SiglipTokenizer.from_dir(path), ImageProcessor.from_dir(path, SIGLIP_DEFAULTS), path)
