"""AutoencoderKL in Paddle: the Stable Diffusion VAE's encoder (image -> latent distribution) and decoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import paddle
import paddle.nn.functional as F
from paddle import nn

from ..configs import Config
from ..errors import CheckpointError
from ..layers import build_for_inference
from ..layers.cpu import permute
from ..weights import rename
from .blocks import Attention, Conv, Downsample2D, ResnetBlock2D, Upsample2D

EPS = 1e-6  # every norm in diffusers' Encoder/Decoder


@dataclass
class VAEConfig(Config):
    """diffusers' AutoencoderKL config.json, upstream names and defaults."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple = ("DownEncoderBlock2D",)
    up_block_types: tuple = ("UpDecoderBlock2D",)
    block_out_channels: tuple = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: Any = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: Any = None
    latents_std: Any = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self):
        checks = [("down_block_types", k, k == "DownEncoderBlock2D") for k in self.down_block_types]
        checks += [("up_block_types", k, k == "UpDecoderBlock2D") for k in self.up_block_types]
        checks.append(("act_fn", self.act_fn, self.act_fn in ("silu", "swish")))
        same_depth = len(self.block_out_channels) == len(self.down_block_types)
        checks.append(("block_out_channels", self.block_out_channels, same_depth))
        for field, value, ok in checks:
            if not ok:
                fix = "this port covers AutoencoderKL as SD1.5 / SDXL use it"
                raise CheckpointError(f"unsupported VAE config: {field} = {value!r}", fix)


class AttentionBlock(Attention):
    """The VAE's single-head self-attention over all positions: GroupNorm first, residual after."""

    def __init__(self, channels: int, groups: int):
        super().__init__(channels, heads=1, dim_head=channels, bias=True)
        self.group_norm = nn.GroupNorm(groups, channels, epsilon=EPS)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        b, c, h, w = x.shape
        tokens = permute(self.group_norm(x).reshape([b, c, h * w]), [0, 2, 1])  # (B, H*W, C)
        return permute(super().forward(tokens), [0, 2, 1]).reshape([b, c, h, w]) + x


class MidBlock(nn.Layer):
    """UNetMidBlock2D without a time embedding: resnet, attention, resnet."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.LayerList([ResnetBlock2D(channels, channels, None, groups, EPS) for _ in range(2)])
        self.attentions = nn.LayerList([AttentionBlock(channels, groups)]) if attention else None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class EncoderBlock(nn.Layer):
    """DownEncoderBlock2D: resnets, then a stride-2 convolution padded right/bottom (except the last)."""

    def __init__(self, in_channels: int, out_channels: int, count: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.LayerList(
            [ResnetBlock2D(out_channels if i else in_channels, out_channels, None, groups, EPS) for i in range(count)]
        )
        self.downsamplers = nn.LayerList([Downsample2D(out_channels, padding=0)]) if downsample else None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class DecoderBlock(nn.Layer):
    """UpDecoderBlock2D: resnets, then a 2x nearest upsampling and convolution (except the last)."""

    def __init__(self, in_channels: int, out_channels: int, count: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.LayerList(
            [ResnetBlock2D(out_channels if i else in_channels, out_channels, None, groups, EPS) for i in range(count)]
        )
        self.upsamplers = nn.LayerList([Upsample2D(out_channels)]) if upsample else None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class Encoder(nn.Layer):
    """Image (B, 3, H, W) -> mean and log-variance stacked (B, 2*latent, H/f, W/f)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, groups, n = cfg.block_out_channels, cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = Conv(cfg.in_channels, ch[0], 3, padding=1)
        ins = [ch[0], *ch[:-1]]
        self.down_blocks = nn.LayerList(
            [EncoderBlock(ins[i], ch[i], cfg.layers_per_block, groups, i < n - 1) for i in range(n)]
        )
        self.mid_block = MidBlock(ch[-1], groups, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, ch[-1], epsilon=EPS)
        self.conv_out = Conv(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Layer):
    """Latent (B, latent, h, w) -> image (B, 3, h*f, w*f)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, groups, n = cfg.block_out_channels[::-1], cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = Conv(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], groups, cfg.mid_block_add_attention)
        ins = [ch[0], *ch[:-1]]
        self.up_blocks = nn.LayerList(
            [DecoderBlock(ins[i], ch[i], cfg.layers_per_block + 1, groups, i < n - 1) for i in range(n)]
        )
        self.conv_norm_out = nn.GroupNorm(groups, ch[-1], epsilon=EPS)
        self.conv_out = Conv(ch[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: paddle.Tensor) -> paddle.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Layer):
    """The VAE: ``encode`` gives the latent distribution's (mean, logvar), ``decode`` an image in [-1, 1]."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        cfg = self.config = config
        latent = cfg.latent_channels
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2D(2 * latent, 2 * latent, 1) if cfg.use_quant_conv else None
        self.post_quant_conv = nn.Conv2D(latent, latent, 1) if cfg.use_post_quant_conv else None

    @property
    def scale_factor(self) -> int:
        """Pixels per latent position along each side."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def encode(self, x: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        """(mean, logvar) of the latent distribution of images (B, 3, H, W) in [-1, 1]; logvar is
        clamped to [-30, 20] as diffusers' DiagonalGaussianDistribution does."""
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = moments.chunk(2, axis=1)
        return mean, paddle.clip(logvar, -30.0, 20.0)

    def decode(self, z: paddle.Tensor) -> paddle.Tensor:
        """Images (B, 3, H, W), roughly in [-1, 1] (not clamped), from unscaled latents (B, latent, h, w)."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


# The published SD1.5 VAE keeps the mid-block attention names of diffusers' old AttentionBlock; diffusers renames
# them at load (ModelMixin._fix_state_dict_keys_on_load, the deprecated-attention-block conversion).
MID_ATTENTION = r"^((?:en|de)coder\.mid_block\.attentions\.\d+\.)"
NAME_RULES = [
    (MID_ATTENTION + r"query\.", r"\1to_q."),
    (MID_ATTENTION + r"key\.", r"\1to_k."),
    (MID_ATTENTION + r"value\.", r"\1to_v."),
    (MID_ATTENTION + r"proj_attn\.", r"\1to_out.0."),
]


def sanitize(weights: Mapping) -> Mapping:
    """Checkpoint names -> this module's names. Pure and idempotent."""
    return rename(weights, NAME_RULES)


def build_vae(config: Mapping, weights: Mapping, dtype: str = "float32") -> AutoencoderKL:
    """A VAE from its config.json and its weights under diffusers' names (torch layout), in ``dtype``."""
    cfg = VAEConfig.from_dict(config)
    return build_for_inference(lambda: AutoencoderKL(cfg), sanitize(weights), dtype)
