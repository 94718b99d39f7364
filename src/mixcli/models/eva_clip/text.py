"""open_clip's TextTransformer (the OpenAI CLIP text tower under open_clip's names) in Paddle: token and learned
positional embeddings, causal pre-norm blocks with exact GELU, ln_final, pooled at the end-of-text token and
multiplied by ``text_projection``."""

from __future__ import annotations

import paddle
from paddle import nn

from ...layers.norm import LayerNorm
from ...layers.vit import ViTEncoder, ViTSpec
from .config import OpenCLIPTextConfig

# open_clip's ResidualAttentionBlock: ln_1, attn (nn.MultiheadAttention, renamed onto a fused qkv), ln_2, mlp.
TEXT_NAMES = ("ln_1", "attn", "ln_2", "mlp")


class OpenCLIPText(nn.Layer):
    def __init__(self, cfg: OpenCLIPTextConfig, embed_dim: int):
        super().__init__()
        w = cfg.width
        spec = ViTSpec(w, cfg.heads, int(w * cfg.mlp_ratio), act="gelu", eps=1e-5, causal=True, fused_qkv=True,
                       names=TEXT_NAMES)  # fmt: skip
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        self.positional_embedding = self.create_parameter([cfg.context_length, w])
        self.transformer = ViTEncoder(spec, cfg.layers)
        self.ln_final = LayerNorm(w, 1e-5)
        self.text_projection = self.create_parameter([w, embed_dim])  # used as x @ P, no transpose

    def forward(self, input_ids: paddle.Tensor, pooled_at: paddle.Tensor) -> paddle.Tensor:
        """(B, T) ids, (B,) pooled positions -> (B, embed_dim)."""
        t = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:t].astype(self.token_embedding.weight.dtype)
        x = self.ln_final(self.transformer(x))  # (B, T, W)
        rows = paddle.arange(input_ids.shape[0])
        return paddle.matmul(x[rows, pooled_at], self.text_projection)
