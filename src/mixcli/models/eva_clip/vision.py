"""timm's EVA02 vision tower (``visual.trunk`` of open_clip's TimmModel) in Paddle: patch embeddings with a class
token and learned positions, blocks with 2D rotary attention (no k bias, a LayerNorm before the output
projection) and a SwiGLU MLP with a LayerNorm inside, the final norm, the class token through ``head``."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from ...layers.attention import attention
from ...layers.linear import Linear
from ...layers.norm import LayerNorm
from ...layers.vit import TIMM_NAMES, ViTBlock, ViTEmbeddings, ViTSpec
from .config import EvaVisionConfig


def rotary_tables(grid: int, ref_grid: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """(grid*grid, head_dim) sin and cos of timm's RotaryEmbeddingCat (in_pixels=False, ref_feat_shape): per
    patch, head_dim/4 frequencies of its row then of its column, each repeated twice (interleaved pairs);
    positions are scaled by ref_grid / grid, as EVA does off its pretraining grid."""
    bands = head_dim // 4
    freqs = (1.0 / theta ** (np.arange(bands, dtype=np.float32) / np.float32(bands))).astype(np.float32)
    t = np.arange(grid, dtype=np.float32) / np.float32(grid) * np.float32(ref_grid)
    rows, cols = np.meshgrid(t, t, indexing="ij")  # (grid, grid) each
    angles = np.stack([rows, cols], axis=-1)[..., None] * freqs  # (grid, grid, 2, bands)
    angles = angles.reshape(grid * grid, 2 * bands)
    return (np.repeat(np.sin(angles), 2, axis=-1).astype(np.float32),
            np.repeat(np.cos(angles), 2, axis=-1).astype(np.float32))  # fmt: skip


def rotate_pairs(x: paddle.Tensor) -> paddle.Tensor:
    """timm's rot: (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...) on the last axis."""
    pairs = x.reshape([*x.shape[:-1], x.shape[-1] // 2, 2])
    return paddle.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)


class EvaAttention(nn.Layer):
    """timm's EvaAttention (qkv_fused=False, scale_norm=True): q and v with bias, k without, rotary positions on
    every token but the class token, a LayerNorm (``norm``) on the heads' output before ``proj``."""

    def __init__(self, cfg: EvaVisionConfig):
        super().__init__()
        d = cfg.width
        self.heads, self.head_dim = cfg.heads, d // cfg.heads
        self.q_proj, self.k_proj, self.v_proj = Linear(d, d), Linear(d, d, bias_attr=False), Linear(d, d)
        self.norm = LayerNorm(d, cfg.eps)
        self.proj = Linear(d, d)

    def forward(self, x: paddle.Tensor, rope: tuple[paddle.Tensor, paddle.Tensor]) -> paddle.Tensor:
        b, t, c = x.shape
        heads = [b, t, self.heads, self.head_dim]
        q, k, v = (p(x).reshape(heads) for p in (self.q_proj, self.k_proj, self.v_proj))  # (B, T, H, D)
        q, k = rotated(q, *rope), rotated(k, *rope)
        out = attention(q, k, v, self.head_dim**-0.5, token_major=True).reshape([b, t, c])
        return self.proj(self.norm(out))


def rotated(x: paddle.Tensor, sin: paddle.Tensor, cos: paddle.Tensor) -> paddle.Tensor:
    """(B, T, H, D) with the patch tokens (all but the first) rotated; sin/cos (1, T-1, 1, D)."""
    cls, patches = x[:, :1], x[:, 1:]
    return paddle.concat([cls, patches * cos + rotate_pairs(patches) * sin], axis=1)


class SwiGLU(nn.Layer):
    """timm's SwiGLU with norm_layer: fc2(norm(silu(fc1_g(x)) * fc1_x(x)))."""

    def __init__(self, cfg: EvaVisionConfig):
        super().__init__()
        self.fc1_g, self.fc1_x = Linear(cfg.width, cfg.mlp_dim), Linear(cfg.width, cfg.mlp_dim)
        self.norm = LayerNorm(cfg.mlp_dim, cfg.eps)
        self.fc2 = Linear(cfg.mlp_dim, cfg.width)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.fc2(self.norm(F.silu(self.fc1_g(x)) * self.fc1_x(x)))


class EvaVisionTower(nn.Layer):
    """timm's Eva with global_pool="token" and num_classes=embed_dim (open_clip's TimmModel without its own
    projection): ``embeddings``, ``blocks``, ``norm``, ``head`` (the checkpoint's cls_token, pos_embed and
    patch_embed.proj are renamed onto ``embeddings``)."""

    def __init__(self, cfg: EvaVisionConfig, embed_dim: int):
        super().__init__()
        self.config = cfg
        self.embeddings = ViTEmbeddings(cfg.width, 3, cfg.patch_size, cfg.image_size)
        spec = ViTSpec(cfg.width, cfg.heads, cfg.mlp_dim, eps=cfg.eps, names=TIMM_NAMES)
        self.blocks = nn.LayerList([ViTBlock(spec, EvaAttention(cfg), SwiGLU(cfg)) for _ in range(cfg.layers)])
        self.norm = LayerNorm(cfg.width, cfg.eps)
        self.head = Linear(cfg.width, embed_dim)
        self.rope_tables = None  # (grid, sin, cos), made on first use for the grid seen

    def rope(self, grid: int, dtype) -> tuple[paddle.Tensor, paddle.Tensor]:
        """(1, grid*grid, 1, head_dim) sin and cos for a square grid of patches."""
        if self.rope_tables is None or self.rope_tables[0] != (grid, dtype):
            cfg = self.config
            sin, cos = rotary_tables(grid, cfg.ref_grid, cfg.width // cfg.heads, cfg.rope_theta)
            tables = [paddle.to_tensor(a[None, :, None, :]).astype(dtype) for a in (sin, cos)]
            self.rope_tables = ((grid, dtype), *tables)
        return self.rope_tables[1], self.rope_tables[2]

    def forward(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        """(N, 3, S, S) -> (N, embed_dim): the final-normed class token through head."""
        x = self.embeddings(pixel_values)  # (N, 1 + g*g, D)
        rope = self.rope(pixel_values.shape[-1] // self.config.patch_size, x.dtype)
        for block in self.blocks:
            x = block(x, rope)
        return self.head(self.norm(x)[:, 0])
