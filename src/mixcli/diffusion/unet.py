"""UNet2DConditionModel in Paddle for the SD1.5 and SDXL configurations, loading diffusers' weight names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import paddle
import paddle.nn.functional as F
from paddle import nn

from ..configs import Config
from ..errors import CheckpointError
from ..layers import build_for_inference
from .blocks import (
    Conv,
    Downsample2D,
    ResnetBlock2D,
    TimestepEmbedding,
    Transformer2DModel,
    Upsample2D,
    timestep_embedding,
)

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DCrossAttn", None)
# Fields whose other values select architectures this port does not implement: the value it requires.
REQUIRED = {
    "time_embedding_type": "positional", "resnet_time_scale_shift": "default", "attention_type": "default",
    "class_embed_type": None, "num_class_embeds": None, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "time_embedding_act_fn": None, "timestep_post_act": None, "cross_attention_norm": None,
    "class_embeddings_concat": False, "dual_cross_attention": False, "resnet_skip_time_act": False,
}  # fmt: skip


@dataclass
class UNetConfig(Config):
    """diffusers' UNet2DConditionModel config.json, upstream names and defaults."""

    sample_size: Any = None
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    down_block_types: tuple = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    only_cross_attention: Any = False
    block_out_channels: tuple = (320, 640, 1280, 1280)
    layers_per_block: Any = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    dropout: float = 0.0
    act_fn: str = "silu"
    norm_num_groups: int | None = 32
    norm_eps: float = 1e-5
    cross_attention_dim: Any = 1280
    transformer_layers_per_block: Any = 1
    reverse_transformer_layers_per_block: Any = None
    encoder_hid_dim: int | None = None
    encoder_hid_dim_type: str | None = None
    attention_head_dim: Any = 8
    num_attention_heads: Any = None
    dual_cross_attention: bool = False
    use_linear_projection: bool = False
    class_embed_type: str | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    num_class_embeds: int | None = None
    upcast_attention: bool = False
    resnet_time_scale_shift: str = "default"
    resnet_skip_time_act: bool = False
    resnet_out_scale_factor: float = 1.0
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    time_embedding_act_fn: str | None = None
    timestep_post_act: str | None = None
    time_cond_proj_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    projection_class_embeddings_input_dim: int | None = None
    attention_type: str = "default"
    class_embeddings_concat: bool = False
    mid_block_only_cross_attention: bool | None = None
    cross_attention_norm: str | None = None
    addition_embed_type_num_heads: int = 64

    def __post_init__(self):
        check_supported(self)

    def per_block(self, name: str) -> list:
        """A field that may be one value or one per down block, as a list per down block."""
        value = getattr(self, name)
        return list(value) if isinstance(value, (list, tuple)) else [value] * len(self.down_block_types)

    @property
    def heads(self) -> list[int]:
        """Attention heads per down block: ``attention_head_dim`` means the head count when
        ``num_attention_heads`` is null (diffusers issue 2011)."""
        return self.per_block("num_attention_heads" if self.num_attention_heads is not None else "attention_head_dim")

    @property
    def depths(self) -> list[list[int] | int]:
        """Transformer layers per down block (an int, or one per resnet)."""
        return self.per_block("transformer_layers_per_block")

    @property
    def up_depths(self) -> list[list[int] | int]:
        """Transformer layers per up block: the down blocks' reversed unless given."""
        return list(self.reverse_transformer_layers_per_block or self.depths[::-1])

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or self.block_out_channels[0] * 4


def _unsupported(field: str, value) -> CheckpointError:
    return CheckpointError(
        f"unsupported UNet config: {field} = {value!r}",
        "this port covers the SD1.5 / SDXL UNet2DConditionModel architectures",
    )


def check_supported(cfg: UNetConfig) -> None:
    """Raise CheckpointError naming the first field whose value selects an architecture not implemented here."""
    check_encoder(cfg)
    for kind in cfg.up_block_types:
        if kind not in UP_BLOCKS:
            raise _unsupported("up_block_types", kind)
    if len(cfg.up_block_types) != len(cfg.down_block_types):
        raise _unsupported("up_block_types", cfg.up_block_types)


def check_encoder(cfg: UNetConfig) -> None:
    """check_supported for the parts a ControlNet shares with the UNet (all but the up blocks)."""
    for field, wanted in REQUIRED.items():
        if getattr(cfg, field) != wanted:
            raise _unsupported(field, getattr(cfg, field))
    for kind in cfg.down_block_types:
        if kind not in DOWN_BLOCKS:
            raise _unsupported("down_block_types", kind)
    if cfg.mid_block_type not in MID_BLOCKS:
        raise _unsupported("mid_block_type", cfg.mid_block_type)
    if cfg.addition_embed_type not in (None, "text_time"):
        raise _unsupported("addition_embed_type", cfg.addition_embed_type)
    if cfg.act_fn not in ("silu", "swish"):
        raise _unsupported("act_fn", cfg.act_fn)
    if any(cfg.per_block("only_cross_attention")) or cfg.mid_block_only_cross_attention:
        raise _unsupported("only_cross_attention", cfg.only_cross_attention)
    if not cfg.norm_num_groups:
        raise _unsupported("norm_num_groups", cfg.norm_num_groups)
    if len(cfg.block_out_channels) != len(cfg.down_block_types):
        raise _unsupported("block_out_channels", cfg.block_out_channels)


def _layers(depth, count: int) -> list[int]:
    """Transformer depth for each of ``count`` resnet/transformer pairs."""
    return list(depth) if isinstance(depth, (list, tuple)) else [depth] * count


# --- blocks -------------------------------------------------------------------------------------


class DownBlock(nn.Layer):
    """CrossAttnDownBlock2D (resnets each followed by a transformer) or DownBlock2D (resnets only),
    then a stride-2 downsampler unless it is the last block."""

    def __init__(self, cfg: UNetConfig, index: int, in_channels: int, cross_attention: bool):
        super().__init__()
        out = cfg.block_out_channels[index]
        count = cfg.per_block("layers_per_block")[index]
        groups, eps, temb = cfg.norm_num_groups, cfg.norm_eps, cfg.time_embed_dim
        self.resnets = nn.LayerList(
            [ResnetBlock2D(in_channels if i == 0 else out, out, temb, groups, eps) for i in range(count)]
        )
        self.attentions = None
        if cross_attention:
            heads, depths = cfg.heads[index], _layers(cfg.depths[index], count)
            cross = cfg.per_block("cross_attention_dim")[index]
            self.attentions = nn.LayerList(
                [Transformer2DModel(heads, out // heads, out, depths[i], cross, groups, cfg.use_linear_projection,
                                    cfg.upcast_attention) for i in range(count)]  # fmt: skip
            )
        last = index == len(cfg.block_out_channels) - 1
        self.downsamplers = None if last else nn.LayerList([Downsample2D(out, cfg.downsample_padding)])

    def forward(self, x, temb, context) -> tuple[paddle.Tensor, list[paddle.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Layer):
    """UNetMidBlock2DCrossAttn: resnet, transformer, resnet."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        ch, groups, eps, temb = cfg.block_out_channels[-1], cfg.norm_num_groups, cfg.norm_eps, cfg.time_embed_dim
        heads, depth = cfg.heads[-1], _layers(cfg.depths[-1], 1)[0]
        scale = cfg.mid_block_scale_factor
        self.resnets = nn.LayerList([ResnetBlock2D(ch, ch, temb, groups, eps, scale) for _ in range(2)])
        cross = cfg.per_block("cross_attention_dim")[-1]
        self.attentions = nn.LayerList(
            [Transformer2DModel(heads, ch // heads, ch, depth, cross, groups, cfg.use_linear_projection,
                                cfg.upcast_attention)]  # fmt: skip
        )

    def forward(self, x, temb, context) -> paddle.Tensor:
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, context), temb)


class UpBlock(nn.Layer):
    """CrossAttnUpBlock2D or UpBlock2D: each resnet takes the previous output concatenated with a skip
    connection; an upsampler follows unless it is the last block."""

    def __init__(self, cfg: UNetConfig, index: int, cross_attention: bool):
        super().__init__()
        channels = cfg.block_out_channels[::-1]
        out, prev = channels[index], channels[max(index - 1, 0)]
        skip_in = channels[min(index + 1, len(channels) - 1)]
        count = cfg.per_block("layers_per_block")[::-1][index] + 1
        groups, eps, temb = cfg.norm_num_groups, cfg.norm_eps, cfg.time_embed_dim
        self.resnets = nn.LayerList(
            [ResnetBlock2D((prev if i == 0 else out) + (skip_in if i == count - 1 else out), out, temb, groups, eps)
             for i in range(count)]  # fmt: skip
        )
        self.attentions = None
        if cross_attention:
            heads, depths = cfg.heads[::-1][index], _layers(cfg.up_depths[index], count)
            cross = cfg.per_block("cross_attention_dim")[::-1][index]
            self.attentions = nn.LayerList(
                [Transformer2DModel(heads, out // heads, out, depths[i], cross, groups, cfg.use_linear_projection,
                                    cfg.upcast_attention) for i in range(count)]  # fmt: skip
            )
        last = index == len(channels) - 1
        self.upsamplers = None if last else nn.LayerList([Upsample2D(out)])

    def forward(self, x, skips: list[paddle.Tensor], temb, context, size=None) -> paddle.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(paddle.concat([x, skips.pop()], axis=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


# --- the model ----------------------------------------------------------------------------------


class UNetEncoder(nn.Layer):
    """What the UNet and a ControlNet share, as diffusers' ControlNetModel copies it from the UNet: the input
    convolution, the time embedding (with SDXL's ``text_time`` and LCM's guidance embedding), the down blocks
    and the mid block."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        cfg = self.config = config
        channels, temb = cfg.block_out_channels, cfg.time_embed_dim
        self.conv_in = Conv(cfg.in_channels, channels[0], cfg.conv_in_kernel, padding=(cfg.conv_in_kernel - 1) // 2)
        self.time_embedding = TimestepEmbedding(channels[0], temb, cfg.time_cond_proj_dim)
        if cfg.addition_embed_type == "text_time":
            self.add_embedding = TimestepEmbedding(cfg.projection_class_embeddings_input_dim, temb)
        ins = [channels[0], *channels[:-1]]
        self.down_blocks = nn.LayerList(
            [DownBlock(cfg, i, ins[i], kind == "CrossAttnDownBlock2D") for i, kind in enumerate(cfg.down_block_types)]
        )
        self.mid_block = MidBlock(cfg) if cfg.mid_block_type else None

    def embedding(self, timestep, sample: paddle.Tensor, timestep_cond=None, text_embeds=None, time_ids=None):
        """The embedding (B, time_embed_dim) every resnet adds: timestep, plus SDXL's added embedding."""
        emb = self.embed_time(timestep, sample, timestep_cond)
        if self.config.addition_embed_type == "text_time":
            emb = emb + self.embed_added(text_embeds, time_ids, emb.dtype)
        return emb

    def encode(self, x: paddle.Tensor, emb, context) -> tuple[paddle.Tensor, list[paddle.Tensor]]:
        """The down and mid blocks over ``x`` (conv_in's output): the mid block's output and the skip
        connections, ``x`` first."""
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, emb, context)
            skips += block_skips
        if self.mid_block is not None:
            x = self.mid_block(x, emb, context)
        return x, skips

    def embed_time(self, timestep, sample: paddle.Tensor, condition=None) -> paddle.Tensor:
        """Timestep embedding (B, time_embed_dim), with LCM's guidance embedding when configured."""
        batch = sample.shape[0]
        if isinstance(timestep, paddle.Tensor):
            t = timestep.astype("float32").reshape([-1]).expand([batch])
        else:
            t = paddle.full([batch], float(timestep), dtype="float32")
        cfg = self.config
        t_emb = timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        t_emb = t_emb.astype(sample.dtype)
        if condition is not None and self.time_embedding.cond_proj is None:
            raise ValueError("timestep_cond given to a UNet without time_cond_proj_dim")
        return self.time_embedding(t_emb, None if condition is None else condition.astype(sample.dtype))

    def embed_added(self, text_embeds, time_ids, dtype) -> paddle.Tensor:
        """SDXL's ``text_time`` embedding: pooled text (B, P) and sinusoidal size/crop ids (B, 6)."""
        if text_embeds is None or time_ids is None:
            raise ValueError("this UNet (addition_embed_type text_time) needs text_embeds and time_ids")
        cfg = self.config
        ids = time_ids.astype("float32").reshape([-1])
        time_embeds = timestep_embedding(ids, cfg.addition_time_embed_dim, cfg.flip_sin_to_cos, cfg.freq_shift)
        time_embeds = time_embeds.reshape([text_embeds.shape[0], -1])
        return self.add_embedding(paddle.concat([text_embeds.astype(dtype), time_embeds.astype(dtype)], axis=-1))


class UNet2DConditionModel(UNetEncoder):
    """Predicts the noise (or v) of a latent batch at a timestep, conditioned on text states; SDXL adds
    the pooled text embedding and the size/crop ids (``text_time``), LCM a guidance embedding."""

    def __init__(self, config: UNetConfig):
        super().__init__(config)
        cfg, channels = config, config.block_out_channels
        self.up_blocks = nn.LayerList(
            [UpBlock(cfg, i, kind == "CrossAttnUpBlock2D") for i, kind in enumerate(cfg.up_block_types)]
        )
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, channels[0], epsilon=cfg.norm_eps)
        self.conv_out = Conv(channels[0], cfg.out_channels, cfg.conv_out_kernel, padding=(cfg.conv_out_kernel - 1) // 2)

    def forward(self, sample: paddle.Tensor, timestep, encoder_hidden_states: paddle.Tensor, text_embeds=None,
                time_ids=None, timestep_cond=None, down_residuals=None, mid_residual=None) -> paddle.Tensor:  # fmt: skip
        """The model output (B, out_channels, H, W) for latents (B, in_channels, H, W), a timestep (a number,
        or a 0-d/1-d tensor broadcast over the batch) and text states (B, S, cross_attention_dim); a
        ControlNet's residuals are added to the skip connections and the mid block's output (diffusers'
        down_block_additional_residuals, mid_block_additional_residual)."""
        emb = self.embedding(timestep, sample, timestep_cond, text_embeds, time_ids)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        x, skips = self.encode(self.conv_in(sample), emb, encoder_hidden_states)
        if down_residuals is not None:
            skips = [skip + residual for skip, residual in zip(skips, down_residuals, strict=True)]
        if mid_residual is not None:
            x = x + mid_residual
        for block in self.up_blocks:
            taken = len(block.resnets)
            block_skips, skips = skips[-taken:], skips[:-taken]
            size = skips[-1].shape[2:] if skips else None  # the next block's resolution (odd sizes round up going down)
            x = block(x, block_skips, emb, encoder_hidden_states, size)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


def build_unet(config: Mapping, weights: Mapping, dtype: str = "float32") -> UNet2DConditionModel:
    """A UNet from its config.json and its weights under diffusers' names (torch layout), in ``dtype``."""
    cfg = UNetConfig.from_dict(config)
    return build_for_inference(lambda: UNet2DConditionModel(cfg), weights, dtype)
