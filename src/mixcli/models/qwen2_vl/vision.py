"""Qwen2-VL's and Qwen2.5-VL's vision transformers: 3-D patch embedding, the shared ViT block with 2-D
rotary attention per frame (or per window), patch merger."""

from __future__ import annotations

import numpy as np
import paddle
from paddle import nn

from ...layers.attention import attention
from ...layers.linear import Linear
from ...layers.rope import apply_rotary
from ...layers.vit import TIMM_NAMES, ViTBlock, ViTSpec, activation, make_norm
from .config import VisionConfig


def vision_positions(grid_thw: np.ndarray, merge: int) -> np.ndarray:
    """(patches, 2) row/column of every patch, in the merge-block-major order the processor
    flattens patches in (transformers' vision_utils.get_vision_position_ids)."""
    out = []
    for t, h, w in np.asarray(grid_thw).tolist():
        hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        block = (h // merge, merge, w // merge, merge)
        hpos = hpos.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
        wpos = wpos.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
        out.append(np.tile(np.stack([hpos, wpos], axis=-1), (t, 1)))
    return np.concatenate(out)


def frame_lengths(grid_thw: np.ndarray) -> list[int]:
    """Patches per frame, one entry per frame: attention never crosses frames or images (cu_seqlens)."""
    return [int(h * w) for t, h, w in np.asarray(grid_thw).tolist() for _ in range(int(t))]


def window_index(grid_thw: np.ndarray, merge: int, window: int) -> tuple[np.ndarray, list[int]]:
    """Qwen2.5-VL's window order of the merged units and the patches per window
    (transformers' vision_utils.get_vision_window_index: windows of window/merge units a side,
    row-major within each frame, empty windows dropped)."""
    order, lengths, base = [], [], 0
    for t, h, w in np.asarray(grid_thw).tolist():
        gh, gw = h // merge, w // merge
        index = np.arange(t * gh * gw).reshape(t, gh, gw)
        pad_h, pad_w = window - gh % window, window - gw % window
        padded = np.pad(index, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=-100)
        nh, nw = (gh + pad_h) // window, (gw + pad_w) // window
        padded = padded.reshape(t, nh, window, nw, window).transpose(0, 1, 3, 2, 4).reshape(t, nh * nw, -1)
        counts = (padded != -100).sum(-1).reshape(-1)
        order.append(padded[padded != -100] + base)
        lengths += [int(c) * merge * merge for c in counts if c]
        base += t * gh * gw
    return np.concatenate(order), lengths


class PatchEmbed(nn.Layer):
    """Conv3d with kernel = stride = (temporal_patch, patch, patch), i.e. one matmul per flattened patch."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embed_dim = cfg.embed_dim
        kernel = [cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size]
        self.proj = nn.Conv3D(cfg.in_channels, cfg.embed_dim, kernel, stride=kernel, bias_attr=False)

    def forward(self, patches: paddle.Tensor) -> paddle.Tensor:
        weight = self.proj.weight.reshape([self.embed_dim, -1])  # (E, C*T*P*P), same order as the patches
        return paddle.matmul(patches.astype(weight.dtype), weight, transpose_y=True)


class VisionAttention(nn.Layer):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.proj = Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, x: paddle.Tensor, cos, sin, lengths: list[int]) -> paddle.Tensor:
        n = x.shape[0]
        # One copy into head-major order: Paddle's ops run several times slower on strided views.
        qkv = self.qkv(x).reshape([n, 3, self.heads, self.head_dim]).transpose([1, 2, 0, 3]).contiguous()
        # Upstream rotates q and k in float32 (apply_rotary_pos_emb_vision); one fused rotation for both.
        qk = apply_rotary(_as_float32(qkv[:2]), cos, sin)  # (2, H, N, D)
        qk = qk if qk.dtype == qkv.dtype else qk.astype(qkv.dtype)
        q, k, v = qk[0], qk[1], qkv[2]
        outs, start = [], 0
        for length in lengths:  # one frame at a time
            part = slice(start, start + length)
            outs.append(attention(q[None, :, part], k[None, :, part], v[None, :, part], self.head_dim**-0.5)[0])
            start += length
        out = paddle.concat(outs, axis=1) if len(outs) > 1 else outs[0]  # (H, N, D)
        return self.proj(out.transpose([1, 0, 2]).reshape([n, -1]))


def _as_float32(x: paddle.Tensor) -> paddle.Tensor:
    return x if x.dtype == paddle.float32 else x.astype("float32")


class VisionSwiGLU(nn.Layer):
    """Qwen2.5-VL's vision MLP: down(act(gate(x)) * up(x)), with biases."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.embed_dim, cfg.intermediate_size)
        self.up_proj = Linear(cfg.embed_dim, cfg.intermediate_size)
        self.down_proj = Linear(cfg.intermediate_size, cfg.embed_dim)
        self.act = activation(cfg.hidden_act)

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def vit_spec(cfg: VisionConfig) -> ViTSpec:
    """Qwen2VLVisionBlock as a shared block (pre-norm, quick_gelu MLP); its attention is the rotary one above,
    and Qwen2.5-VL's MLP the SwiGLU."""
    norm = "rms_norm" if cfg.qwen2_5 else "layer_norm"
    return ViTSpec(cfg.embed_dim, cfg.num_heads, int(cfg.embed_dim * cfg.mlp_ratio), act=cfg.hidden_act, norm=norm,
                   eps=1e-6, names=TIMM_NAMES)  # fmt: skip


def vision_block(cfg: VisionConfig) -> ViTBlock:
    """norm1, attn (x, cos, sin, frame lengths), norm2, mlp."""
    return ViTBlock(vit_spec(cfg), VisionAttention(cfg), VisionSwiGLU(cfg) if cfg.qwen2_5 else None)


class PatchMerger(nn.Layer):
    """LayerNorm, then each merge x merge block of patches (adjacent rows) through Linear, GELU, Linear."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.width = cfg.embed_dim * cfg.spatial_merge_size**2
        spec = vit_spec(cfg)
        self.ln_q = make_norm(spec.norm, spec.dim, spec.eps)
        self.mlp = nn.Sequential(Linear(self.width, self.width), nn.GELU(), Linear(self.width, cfg.hidden_size))

    def forward(self, x):
        return self.mlp(self.ln_q(x).reshape([-1, self.width]))


class VisionTransformer(nn.Layer):
    """Qwen2VisionTransformerPretrainedModel: flattened patches (N, C*T*P*P) -> merged tokens (N / merge², hidden)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.LayerList([vision_block(cfg) for _ in range(cfg.depth)])
        self.merger = PatchMerger(cfg)
        quarter = cfg.head_dim // 2  # h and w each rotate half of the head
        self.inv_freq = 1.0 / (10000.0 ** (np.arange(0, quarter, 2, dtype=np.float32) / quarter))

    def rotary(self, grid_thw: np.ndarray) -> tuple[paddle.Tensor, paddle.Tensor]:
        """cos, sin (N, D): angles of the row then the column, the pair repeated (rotate-half)."""
        pos = vision_positions(grid_thw, self.config.spatial_merge_size).astype(np.float32)
        freqs = (pos[:, :, None] * self.inv_freq).reshape(len(pos), -1)  # (N, D/2): h freqs, then w freqs
        emb = paddle.to_tensor(np.concatenate([freqs, freqs], axis=-1))
        return emb.cos(), emb.sin()

    def forward(self, patches: paddle.Tensor, grid_thw: np.ndarray) -> paddle.Tensor:
        cfg = self.config
        x = self.patch_embed(patches)
        cos, sin = self.rotary(grid_thw)
        frames = frame_lengths(grid_thw)
        if not cfg.qwen2_5:
            for block in self.blocks:
                x = block(x, cos, sin, frames)
            return self.merger(x)
        # Qwen2.5-VL: patches regrouped window by window (in whole merge units), restored after the merger.
        window = cfg.window_size // cfg.spatial_merge_size // cfg.patch_size  # in merged units
        order, windows = window_index(grid_thw, cfg.spatial_merge_size, window)
        x, cos, sin = (self._permute(t, order) for t in (x, cos, sin))
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, frames if i in cfg.fullatt_block_indexes else windows)
        return paddle.gather(self.merger(x), paddle.to_tensor(np.argsort(order)))

    def _permute(self, t: paddle.Tensor, order: np.ndarray) -> paddle.Tensor:
        """Reorder rows (of x (N, E) or cos/sin (N, D)) by merge unit."""
        unit = self.config.spatial_merge_size**2
        shape = t.shape
        grouped = t.reshape([-1, unit, shape[-1]])
        return paddle.gather(grouped, paddle.to_tensor(order)).reshape(shape)
