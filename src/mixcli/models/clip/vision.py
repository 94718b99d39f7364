"""The vision tower of the contrastive families: the VLMs' VisionTower (layers.vit) plus what only the pooled
output needs, ``post_layernorm`` and, for SigLIP, a pooling head."""

from __future__ import annotations

import paddle
from paddle import nn

from ...layers.norm import LayerNorm
from ...layers.vit import ViTSpec, VisionTower


def vision_spec(cfg) -> ViTSpec:
    """CLIPEncoderLayer / SiglipEncoderLayer of a vision config as a shared block: pre-norm, transformers' names."""
    return ViTSpec(cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, act=cfg.hidden_act,
                   eps=cfg.layer_norm_eps)  # fmt: skip


class PooledVisionTower(VisionTower):
    """transformers' CLIPVisionTransformer (``clip``: class token, pre_layrnorm, pooled at the class token) or
    SiglipVisionTransformer (no class token, pooled by ``head``), under their parameter names."""

    def __init__(self, cfg, clip: bool, head: nn.Layer | None = None):
        spec = vision_spec(cfg)
        super().__init__(spec, cfg.num_hidden_layers, cfg.num_channels, cfg.patch_size, cfg.image_size, clip=clip)
        self.post_layernorm = LayerNorm(spec.dim, spec.eps)
        self.head = head

    def pooled(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        """(N, C, H, W) -> (N, D)."""
        states = self(pixel_values, [-1])  # (N, T, D)
        if self.head is None:
            return self.post_layernorm(states[:, 0])
        return self.head(self.post_layernorm(states))
