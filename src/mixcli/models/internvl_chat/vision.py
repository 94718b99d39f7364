"""InternViT (modeling_intern_vit.py) on the shared ViT layers: class token, interpolated position
embeddings, fused qkv, layer scale, qk-norm."""

from __future__ import annotations

import paddle
from paddle import nn

from ...layers.vit import TIMM_NAMES, ViTEmbeddings, ViTEncoder, ViTSpec
from .config import VisionConfig


def vit_spec(cfg: VisionConfig) -> ViTSpec:
    """InternVisionEncoderLayer as a shared block: pre-norm, layer scale, names as upstream's."""
    return ViTSpec(
        cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, act=cfg.hidden_act, norm=cfg.norm_type,
        eps=cfg.layer_norm_eps, fused_qkv=True, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_normalization,
        layer_scale=True, names=TIMM_NAMES,
    )  # fmt: skip


class InternViT(nn.Layer):
    """Returns the hidden states of `select_layer` (counted like upstream's hidden_states tuple)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = ViTEmbeddings(cfg.hidden_size, cfg.num_channels, cfg.patch_size, cfg.image_size)
        self.encoder = ViTEncoder(vit_spec(cfg), cfg.num_hidden_layers)

    def forward(self, pixel_values: paddle.Tensor, select_layer: int = -1) -> paddle.Tensor:
        # hidden_states[0] is the embedding output, hidden_states[i] the output of layer i.
        return self.encoder(self.embeddings(pixel_values), select_layer)
