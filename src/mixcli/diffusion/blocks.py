"""Building blocks shared by the UNet and the VAE, named as diffusers names them: resnets, resampling,
attention, the spatial transformer, and the timestep embedding."""

from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F
from paddle import nn

from ..layers.attention import attention as _attention


# --- timesteps ----------------------------------------------------------------------------------


def timestep_embedding(timesteps: paddle.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> paddle.Tensor:
    """Sinusoidal embeddings (N, dim) of N timesteps, in float32 (diffusers' get_timestep_embedding)."""
    half = dim // 2
    exponent = paddle.arange(half, dtype="float32") * (-math.log(10000.0) / (half - freq_shift))
    angles = timesteps.astype("float32")[:, None] * paddle.exp(exponent)[None, :]  # (N, half)
    sin, cos = paddle.sin(angles), paddle.cos(angles)
    emb = paddle.concat([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    return paddle.concat([emb, paddle.zeros([emb.shape[0], 1], emb.dtype)], axis=-1) if dim % 2 else emb


class TimestepEmbedding(nn.Layer):
    """linear_1 -> SiLU -> linear_2, with LCM's optional guidance projection added to the input (cond_proj)."""

    def __init__(self, in_channels: int, time_embed_dim: int, cond_proj_dim: int | None = None):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.cond_proj = nn.Linear(cond_proj_dim, in_channels, bias_attr=False) if cond_proj_dim else None
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, sample: paddle.Tensor, condition: paddle.Tensor | None = None) -> paddle.Tensor:
        if condition is not None:
            sample = sample + self.cond_proj(condition)
        return self.linear_2(F.silu(self.linear_1(sample)))


# --- convolutional pieces -----------------------------------------------------------------------


class ResnetBlock2D(nn.Layer):
    """GroupNorm-SiLU-conv twice, the time embedding added between, a 1x1 shortcut when channels change."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, groups: int, eps: float,
                 output_scale_factor: float = 1.0):  # fmt: skip
        super().__init__()
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, epsilon=eps)
        self.conv1 = nn.Conv2D(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = nn.GroupNorm(groups, out_channels, epsilon=eps)
        self.conv2 = nn.Conv2D(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2D(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: paddle.Tensor, temb: paddle.Tensor | None = None) -> paddle.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = shortcut + h
        return out if self.output_scale_factor == 1.0 else out / self.output_scale_factor


class Downsample2D(nn.Layer):
    """A stride-2 3x3 convolution; padding 0 pads right and bottom by one first (the VAE encoder's)."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2D(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.padding == 0:
            x = F.pad(x, [0, 1, 0, 1])
        return self.conv(x)


class Upsample2D(nn.Layer):
    """Nearest-neighbour upsampling (2x, or to the skip connection's size) followed by a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2D(channels, channels, 3, padding=1)

    def forward(self, x: paddle.Tensor, size: tuple[int, int] | None = None) -> paddle.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=list(size), mode="nearest")
        return self.conv(x)


# --- attention ----------------------------------------------------------------------------------


def split_heads(x: paddle.Tensor, heads: int) -> paddle.Tensor:
    """(B, T, H*D) -> (B, H, T, D), contiguous."""
    b, t, _ = x.shape
    return x.reshape([b, t, heads, -1]).transpose([0, 2, 1, 3]).contiguous()


def merge_heads(x: paddle.Tensor) -> paddle.Tensor:
    """(B, H, T, D) -> (B, T, H*D), contiguous."""
    b, h, t, d = x.shape
    return x.transpose([0, 2, 1, 3]).reshape([b, t, h * d])


class Attention(nn.Layer):
    """Multi-head attention: self-attention, or cross-attention over ``context`` (diffusers' Attention)."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, cross_attention_dim: int | None = None,
                 bias: bool = False, upcast: bool = False):  # fmt: skip
        super().__init__()
        inner = heads * dim_head
        context_dim = cross_attention_dim or query_dim
        self.heads, self.scale, self.upcast = heads, dim_head**-0.5, upcast
        self.to_q = nn.Linear(query_dim, inner, bias_attr=bias)
        self.to_k = nn.Linear(context_dim, inner, bias_attr=bias)
        self.to_v = nn.Linear(context_dim, inner, bias_attr=bias)
        self.to_out = nn.LayerList([nn.Linear(inner, query_dim)])  # diffusers: to_out = [Linear, Dropout]

    def forward(self, x: paddle.Tensor, context: paddle.Tensor | None = None) -> paddle.Tensor:
        context = x if context is None else context
        q = split_heads(self.to_q(x), self.heads)  # (B, H, T, D)
        k = split_heads(self.to_k(context), self.heads)  # (B, H, S, D)
        v = split_heads(self.to_v(context), self.heads)
        dtype = q.dtype
        if self.upcast and dtype != paddle.float32:  # upcast_attention: scores in float32
            q, k, v = q.astype("float32"), k.astype("float32"), v.astype("float32")
        out = _attention(q, k, v, self.scale).astype(dtype)
        return self.to_out[0](merge_heads(out))


class GEGLU(nn.Layer):
    """A projection to twice the width, one half gating the other through GELU."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        hidden, gate = self.proj(x).chunk(2, axis=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Layer):
    """GEGLU then a projection back: ``net.0`` and ``net.2`` (``net.1`` is diffusers' dropout)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.LayerList([GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Layer):
    """Pre-norm self-attention, cross-attention over the text, and a GEGLU feed-forward, each residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int, upcast: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, epsilon=1e-5)
        self.attn1 = Attention(dim, heads, dim_head, upcast=upcast)
        self.norm2 = nn.LayerNorm(dim, epsilon=1e-5)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim, upcast=upcast)
        self.norm3 = nn.LayerNorm(dim, epsilon=1e-5)
        self.ff = FeedForward(dim)

    def forward(self, x: paddle.Tensor, context: paddle.Tensor) -> paddle.Tensor:
        x = x + self.attn1(self.norm1(x))  # (B, T, C)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Layer):
    """GroupNorm, a projection in (1x1 conv, or linear as SDXL has it), transformer blocks over the
    H*W positions, a projection out, and the residual."""

    def __init__(self, heads: int, dim_head: int, in_channels: int, num_layers: int, cross_attention_dim: int,
                 norm_num_groups: int, use_linear_projection: bool, upcast: bool = False):  # fmt: skip
        super().__init__()
        inner = heads * dim_head
        self.linear = use_linear_projection
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, epsilon=1e-6)
        if use_linear_projection:
            self.proj_in, self.proj_out = nn.Linear(in_channels, inner), nn.Linear(inner, in_channels)
        else:
            self.proj_in, self.proj_out = nn.Conv2D(in_channels, inner, 1), nn.Conv2D(inner, in_channels, 1)
        self.transformer_blocks = nn.LayerList(
            [BasicTransformerBlock(inner, heads, dim_head, cross_attention_dim, upcast) for _ in range(num_layers)]
        )

    def forward(self, x: paddle.Tensor, context: paddle.Tensor) -> paddle.Tensor:
        b, _, height, width = x.shape
        h = self.norm(x)
        if not self.linear:
            h = self.proj_in(h)
        h = h.transpose([0, 2, 3, 1]).reshape([b, height * width, -1])  # (B, H*W, C)
        if self.linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.linear:
            h = self.proj_out(h)
        h = h.reshape([b, height, width, -1]).transpose([0, 3, 1, 2])  # (B, C, H, W)
        if not self.linear:
            h = self.proj_out(h.contiguous())
        return h + x
