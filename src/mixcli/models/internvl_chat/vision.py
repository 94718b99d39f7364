"""InternViT (modeling_intern_vit.py): class token, interpolated position embeddings, layer scale, qk-norm."""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import nn

from ...layers.attention import attention
from ...layers.linear import Linear
from ...layers.norm import LayerNorm, RMSNorm
from .config import VisionConfig


def make_norm(cfg: VisionConfig, dim: int) -> nn.Layer:
    return RMSNorm(dim, cfg.layer_norm_eps) if cfg.norm_type == "rms_norm" else LayerNorm(dim, cfg.layer_norm_eps)


class VisionEmbeddings(nn.Layer):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d, p = cfg.hidden_size, cfg.patch_size
        self.grid = cfg.image_size // p
        self.class_embedding = self.create_parameter([1, 1, d])
        self.patch_embedding = nn.Conv2D(cfg.num_channels, d, kernel_size=p, stride=p)
        self.position_embedding = self.create_parameter([1, self.grid**2 + 1, d])

    def forward(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        patches = self.patch_embedding(pixel_values)  # (N, D, h, w)
        n, d, h, w = patches.shape
        patches = patches.flatten(2).transpose([0, 2, 1])  # (N, h*w, D)
        cls = self.class_embedding.expand([n, 1, d]).astype(patches.dtype)
        pos = self.position_embedding
        pos = paddle.concat([pos[:, :1], self._patch_positions(pos[:, 1:], h, w)], axis=1)
        return paddle.concat([cls, patches], axis=1) + pos.astype(patches.dtype)

    def _patch_positions(self, pos: paddle.Tensor, h: int, w: int) -> paddle.Tensor:
        # Upstream always interpolates bicubically; at the trained grid size that is the identity.
        if (h, w) == (self.grid, self.grid):
            return pos
        grid = pos.reshape([1, self.grid, self.grid, -1]).transpose([0, 3, 1, 2]).astype("float32")
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.reshape([1, -1, h * w]).transpose([0, 2, 1])


class VisionAttention(nn.Layer):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d = cfg.hidden_size
        self.heads, self.head_dim = cfg.num_attention_heads, d // cfg.num_attention_heads
        self.qkv = Linear(d, 3 * d, bias_attr=None if cfg.qkv_bias else False)
        self.qk_normalization = cfg.qk_normalization
        if cfg.qk_normalization:
            self.q_norm = RMSNorm(d, cfg.layer_norm_eps)
            self.k_norm = RMSNorm(d, cfg.layer_norm_eps)
        self.proj = Linear(d, d)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        b, n, c = x.shape
        # One copy into head-major order: Paddle's ops run several times slower on strided views.
        qkv = self.qkv(x).reshape([b, n, 3, self.heads, self.head_dim]).transpose([2, 0, 3, 1, 4]).contiguous()
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, Dh)
        if self.qk_normalization:  # the norm spans all heads (upstream flattens them first)
            q = self._norm_heads(self.q_norm, q)
            k = self._norm_heads(self.k_norm, k)
        out = attention(q, k, v, self.head_dim**-0.5)
        return self.proj(out.transpose([0, 2, 1, 3]).reshape([b, n, c]))

    def _norm_heads(self, norm: nn.Layer, t: paddle.Tensor) -> paddle.Tensor:
        b, h, n, d = t.shape
        flat = norm(t.transpose([0, 2, 1, 3]).reshape([b, n, h * d]))
        return flat.reshape([b, n, h, d]).transpose([0, 2, 1, 3])


class VisionMLP(nn.Layer):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class VisionLayer(nn.Layer):
    """x + ls1 * attn(norm1(x)); then + ls2 * mlp(norm2(x))."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d = cfg.hidden_size
        self.norm1, self.norm2 = make_norm(cfg, d), make_norm(cfg, d)
        self.attn, self.mlp = VisionAttention(cfg), VisionMLP(cfg)
        self.ls1 = self.create_parameter([d], default_initializer=nn.initializer.Constant(1.0))
        self.ls2 = self.create_parameter([d], default_initializer=nn.initializer.Constant(1.0))

    def forward(self, x):
        x = x + self.attn(self.norm1(x)) * self.ls1
        return x + self.mlp(self.norm2(x)) * self.ls2


class VisionEncoder(nn.Layer):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.LayerList([VisionLayer(cfg) for _ in range(cfg.num_hidden_layers)])


class InternViT(nn.Layer):
    """Returns the hidden states of `select_layer` (counted like upstream's hidden_states tuple)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = VisionEmbeddings(cfg)
        self.encoder = VisionEncoder(cfg)

    def forward(self, pixel_values: paddle.Tensor, select_layer: int = -1) -> paddle.Tensor:
        # hidden_states[0] is the embedding output, hidden_states[i] the output of layer i.
        layers = self.encoder.layers
        stop = select_layer % (len(layers) + 1)
        x = self.embeddings(pixel_values)
        for layer in layers[:stop]:
            x = layer(x)
        return x
