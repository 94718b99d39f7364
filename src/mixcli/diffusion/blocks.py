"""Building blocks shared by the UNet and the VAE, named as diffusers names them (resnets, resampling,
attention, the spatial transformer, the timestep embedding). On the CPU, 3x3 convolutions take the Winograd
path (winograd.py) and layout changes run in NumPy (mixcli.layers.cpu)."""

from __future__ import annotations

import math

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from ..layers.attention import attention
from ..layers.cpu import host, in_parallel, is_tracing, on_cpu, permute
from ..layers.linear import Linear, biased_product
from .winograd import padded_rows, same_3x3, use_winograd, winograd_conv


# --- CPU kernels ---------------------------------------------------------------------------------
# On the CPU, layout changes and upsampling run in NumPy on the tensors' memory (mixcli.layers.cpu), and
# attention takes the shared entry point's CPU paths (mixcli.layers.attention); Paddle's nearest_interp ran
# 5-7x slower than NumPy's repeat. Other devices use Paddle's ops.


def upsample2x(x: paddle.Tensor) -> paddle.Tensor:
    """Nearest-neighbour 2x upsampling of (B, C, H, W); NumPy's repeat on the CPU, where Paddle's
    nearest_interp ran 5-7x slower (measured: 612 ms against 80 ms for (1, 256, 256, 256))."""
    if on_cpu(x):
        return paddle.from_dlpack(host(x).repeat(2, axis=2).repeat(2, axis=3))
    if is_tracing():  # paddle2onnx 2.1 rejects a traced nearest_interp's scale and converts one by size wrongly at times
        b, c, h, w = x.shape
        return x.reshape([b, c, h, 1, w, 1]).expand([b, c, h, 2, w, 2]).reshape([b, c, 2 * h, 2 * w])
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


IM2COL_BYTES = 256 << 20  # conv2d's im2col buffer for the VAE's 512x512 output convolution would be 1.2 GB


# --- layers ---------------------------------------------------------------------------------------


class Conv(nn.Conv2D):
    """paddle.nn.Conv2D (same parameters) taking the Winograd path where it is faster; elsewhere on the
    CPU, maps whose im2col buffer would pass IM2COL_BYTES are convolved in bands of rows."""

    def forward(self, x: paddle.Tensor, shift: paddle.Tensor | None = None) -> paddle.Tensor:
        """The convolution, plus ``shift`` (B, Cout) per sample and channel when given."""
        if use_winograd(self, x):
            return winograd_conv(x, self.weight, self.bias, shift)
        b, c, h, w = x.shape
        if on_cpu(x) and same_3x3(self) and 9 * 4 * c * h * w > IM2COL_BYTES:
            out = self._banded(x, max(1, IM2COL_BYTES // (9 * 4 * c * w)))
        else:
            out = super().forward(x)
        return out if shift is None else out + shift[:, :, None, None]

    def _banded(self, x: paddle.Tensor, rows: int) -> paddle.Tensor:
        xn, (b, _, h, w) = host(x), x.shape
        out = np.empty((b, self.weight.shape[0], h, w), np.float32)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            in_parallel(np.copyto, out[:, :, r0:r1], host(F.conv2d(padded_rows(xn, r0 - 1, r1 + 1), self.weight, self.bias)))
        return paddle.from_dlpack(out)


# --- timesteps ------------------------------------------------------------------------------------


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
        self.linear_1 = Linear(in_channels, time_embed_dim)
        self.cond_proj = Linear(cond_proj_dim, in_channels, bias_attr=False) if cond_proj_dim else None
        self.linear_2 = Linear(time_embed_dim, time_embed_dim)

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
        self.conv1 = Conv(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = nn.GroupNorm(groups, out_channels, epsilon=eps)
        self.conv2 = Conv(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2D(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: paddle.Tensor, temb: paddle.Tensor | None = None) -> paddle.Tensor:
        shift = self.time_emb_proj(F.silu(temb)) if self.time_emb_proj is not None and temb is not None else None
        h = self.conv1(F.silu(self.norm1(x)), shift)  # (B, C_out, H, W), the time embedding added
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
        self.conv = Conv(channels, channels, 3, padding=1)

    def forward(self, x: paddle.Tensor, size: tuple[int, int] | None = None) -> paddle.Tensor:
        if size is None or list(size) == [2 * x.shape[2], 2 * x.shape[3]]:
            if use_winograd(self.conv, x, upsample=True):
                return winograd_conv(x, self.conv.weight, self.conv.bias, upsample=True)
            return self.conv(upsample2x(x))
        return self.conv(F.interpolate(x, size=list(size), mode="nearest"))


# --- attention and the spatial transformer ----------------------------------------------------


class Attention(nn.Layer):
    """Multi-head attention: self-attention, or cross-attention over ``context`` (diffusers' Attention)."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, cross_attention_dim: int | None = None,
                 bias: bool = False, upcast: bool = False):  # fmt: skip
        super().__init__()
        inner = heads * dim_head
        context_dim = cross_attention_dim or query_dim
        self.heads, self.upcast = heads, upcast
        self.to_q = Linear(query_dim, inner, bias_attr=bias)
        self.to_k = Linear(context_dim, inner, bias_attr=bias)
        self.to_v = Linear(context_dim, inner, bias_attr=bias)
        self.to_out = nn.LayerList([Linear(inner, query_dim)])  # diffusers: to_out = [Linear, Dropout]

    def forward(self, x: paddle.Tensor, context: paddle.Tensor | None = None) -> paddle.Tensor:
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)  # (B, T, H*D), (B, S, H*D) x2
        dtype = q.dtype
        if self.upcast and dtype != paddle.float32:  # upcast_attention: scores in float32
            q, k, v = q.astype("float32"), k.astype("float32"), v.astype("float32")
        b, t, width = q.shape
        q, k, v = (y.reshape([b, y.shape[1], self.heads, -1]) for y in (q, k, v))  # (B, T, H, D): no copies
        out = attention(q, k, v, (width // self.heads) ** -0.5, token_major=True)
        return self.to_out[0](out.reshape([b, t, width]).astype(dtype))


class GEGLU(nn.Layer):
    """A projection to twice the width, one half gating the other through GELU; rows (N, C) in."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        w, b = self.proj.weight, self.proj.bias
        half = w.shape[1] // 2
        if on_cpu(x) and x.shape[0] >= 4 * x.shape[1]:
            # Many rows: two products over the weight's halves beat slicing the double-width output
            # (measured at 64x64 latents); with few rows copying the strided halves costs more.
            hidden = paddle.addmm(b[:half].unsqueeze(0), x, w[:, :half])
            return hidden * F.gelu(paddle.addmm(b[half:].unsqueeze(0), x, w[:, half:]))
        hidden, gate = self.proj(x).chunk(2, axis=-1)
        return hidden * F.gelu(gate)


FF_ROWS = 2048  # feed-forward rows at a time: 15% faster than all 8192 rows of 64x64 latents at once


class FeedForward(nn.Layer):
    """GEGLU then a projection back: ``net.0`` and ``net.2`` (``net.1`` is diffusers' dropout). Long inputs
    go through in blocks of FF_ROWS rows, which keeps the 8x-wide intermediate small."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.LayerList([GEGLU(dim, dim * mult), nn.Identity(), Linear(dim * mult, dim)])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        rows = x.reshape([-1, x.shape[-1]])  # (B*T, C)
        blocks = [self.net[2](self.net[0](rows[i : i + FF_ROWS])) for i in range(0, rows.shape[0], FF_ROWS)]
        return (blocks[0] if len(blocks) == 1 else paddle.concat(blocks)).reshape(x.shape)


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
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, epsilon=1e-6)
        if use_linear_projection:
            self.proj_in, self.proj_out = Linear(in_channels, inner), Linear(inner, in_channels)
        else:
            self.proj_in, self.proj_out = nn.Conv2D(in_channels, inner, 1), nn.Conv2D(inner, in_channels, 1)
        self.transformer_blocks = nn.LayerList(
            [BasicTransformerBlock(inner, heads, dim_head, cross_attention_dim, upcast) for _ in range(num_layers)]
        )

    def forward(self, x: paddle.Tensor, context: paddle.Tensor) -> paddle.Tensor:
        b, c, height, width = x.shape
        h = permute(self.norm(x), [0, 2, 3, 1]).reshape([b, height * width, c])  # (B, H*W, C)
        h = pointwise(self.proj_in, h)
        for block in self.transformer_blocks:
            h = block(h, context)
        h = pointwise(self.proj_out, h).reshape([b, height, width, c])
        return permute(h, [0, 3, 1, 2]) + x  # (B, C, H, W)


def pointwise(layer: nn.Layer, x: paddle.Tensor) -> paddle.Tensor:
    """A Linear, or a 1x1 Conv2D applied as the same product, over the last axis of (B, T, C)."""
    if not isinstance(layer, nn.Conv2D):
        return layer(x)
    weight = layer.weight.reshape(layer.weight.shape[:2])  # (out, in)
    if not on_cpu(x):
        return paddle.matmul(x, weight, transpose_y=True) + layer.bias
    return biased_product(x, permute(weight, [1, 0]), layer.bias)
