"""ControlNetModel in Paddle for SD1.5 and SDXL, loading diffusers' layout (config.json +
diffusion_pytorch_model.safetensors): the UNet's encoder (unet.UNetEncoder, the same blocks), an embedding of
the control image added after its input convolution, and 1x1 convolutions whose outputs, times the
conditioning scale, the UNet adds to its skip connections and mid block (diffusers' controlnet.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from ..errors import MixError
from ..layers import build_for_inference
from .blocks import Conv
from .control import controlnet_folder, keep
from .unet import UNetConfig, UNetEncoder, _unsupported, check_encoder

ARCHITECTURE_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}


@dataclass
class ControlNetConfig(UNetConfig):
    """diffusers' ControlNetModel config.json: the UNet encoder's fields plus the control image's."""

    conditioning_channels: int = 3
    controlnet_conditioning_channel_order: str = "rgb"
    conditioning_embedding_out_channels: tuple = (16, 32, 96, 256)
    global_pool_conditions: bool = False

    def __post_init__(self):
        check_encoder(self)
        if self.controlnet_conditioning_channel_order not in ("rgb", "bgr"):
            raise _unsupported("controlnet_conditioning_channel_order", self.controlnet_conditioning_channel_order)

    @property
    def architecture(self) -> str:
        """The pipeline it was trained for: SDXL's UNet takes the ``text_time`` embedding."""
        return "sdxl" if self.addition_embed_type == "text_time" else "sd15"

    @property
    def downscale(self) -> int:
        """How much the conditioning embedding shrinks the control image (one stride-2 conv per step)."""
        return 2 ** (len(self.conditioning_embedding_out_channels) - 1)


class ControlNetConditioningEmbedding(nn.Layer):
    """3x3 convolutions with SiLU from the control image's pixels to the UNet's first feature width, a stride-2
    one per level (diffusers' ControlNetConditioningEmbedding)."""

    def __init__(self, out_channels: int, in_channels: int, widths: tuple):
        super().__init__()
        self.conv_in = Conv(in_channels, widths[0], 3, padding=1)
        blocks = []
        for narrow, wide in zip(widths, widths[1:]):
            blocks += [Conv(narrow, narrow, 3, padding=1), nn.Conv2D(narrow, wide, 3, padding=1, stride=2)]
        self.blocks = nn.LayerList(blocks)
        self.conv_out = Conv(widths[-1], out_channels, 3, padding=1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = F.silu(self.conv_in(x))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)


class ControlNetModel(UNetEncoder):
    """The residuals a control image adds to the UNet: one per skip connection and one for the mid block."""

    def __init__(self, config: ControlNetConfig):
        super().__init__(config)
        cfg, channels = config, config.block_out_channels
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            channels[0], cfg.conditioning_channels, tuple(cfg.conditioning_embedding_out_channels)
        )
        widths = [channels[0]]  # conv_in's output, then each resnet's and each downsampler's
        for i, count in enumerate(cfg.per_block("layers_per_block")):
            widths += [channels[i]] * (count + (i < len(channels) - 1))
        self.controlnet_down_blocks = nn.LayerList([nn.Conv2D(w, w, 1) for w in widths])
        self.controlnet_mid_block = nn.Conv2D(channels[-1], channels[-1], 1)

    def embed_condition(self, pixels: paddle.Tensor) -> paddle.Tensor:
        """The control image's embedding (B, C, H/f, W/f) from pixels (B, 3, H, W) in [0, 1]; it does not change
        from step to step, so the pipeline computes it once (diffusers recomputes it every step)."""
        if self.config.controlnet_conditioning_channel_order == "bgr":
            pixels = paddle.flip(pixels, axis=[1])
        return self.controlnet_cond_embedding(pixels)

    def forward(self, sample: paddle.Tensor, timestep, encoder_hidden_states: paddle.Tensor, condition: paddle.Tensor,
                scale: float = 1.0, text_embeds=None, time_ids=None) -> tuple[list[paddle.Tensor], paddle.Tensor]:  # fmt: skip
        """The down residuals and the mid residual, times ``scale``, for latents (B, C, H, W) and a control
        embedding (``embed_condition``; batch 1 is broadcast); global_pool_conditions ControlNets give each
        residual's spatial mean."""
        emb = self.embedding(timestep, sample, None, text_embeds, time_ids)
        x, skips = self.encode(self.conv_in(sample) + condition, emb, encoder_hidden_states)
        down = [conv(skip) * scale for conv, skip in zip(self.controlnet_down_blocks, skips, strict=True)]
        mid = self.controlnet_mid_block(x) * scale
        if self.config.global_pool_conditions:
            down, mid = [d.mean(axis=[2, 3], keepdim=True) for d in down], mid.mean(axis=[2, 3], keepdim=True)
        return down, mid


def build_controlnet(config: Mapping, weights: Mapping, dtype: str = "float32") -> ControlNetModel:
    """A ControlNet from its config.json and its weights under diffusers' names (torch layout), in ``dtype``."""
    cfg = ControlNetConfig.from_dict(config)
    return build_for_inference(lambda: ControlNetModel(cfg), weights, dtype)


# --- loading for a pipeline ---------------------------------------------------------------------


def check_fits(cfg: ControlNetConfig, unet: UNetConfig, architecture: str, vae_factor: int, name: str) -> None:
    """Refuse a ControlNet made for another architecture or whose residuals do not fit the UNet's skips."""
    if cfg.architecture != architecture:
        want, got = ARCHITECTURE_NAMES[architecture], ARCHITECTURE_NAMES[cfg.architecture]
        raise MixError(f"{name} is a ControlNet for {got}, the model is {want}", f"pass a ControlNet made for {want}")
    fix = "pass a ControlNet made for this model"
    for field in ("in_channels", "block_out_channels", "layers_per_block", "cross_attention_dim"):
        ours, theirs = getattr(cfg, field), getattr(unet, field)
        if _listed(ours) != _listed(theirs):
            raise MixError(f"{name} does not fit this UNet ({field} {ours} against the UNet's {theirs})", fix)
    if cfg.downscale != vae_factor:
        raise MixError(f"{name} shrinks control images {cfg.downscale}x, this model's VAE {vae_factor}x", fix)


def _listed(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def load_controlnet(name: str, pipe, allow_pickle: bool = False):
    """The ControlNet ``name`` checked against the pipeline ``pipe`` (a StableDiffusion) and built in its dtype."""
    from .loading import variant_weights

    folder, config = controlnet_folder(name)
    check_fits(ControlNetConfig.from_dict(config), pipe.unet.config, pipe.architecture, pipe.scale_factor, name)
    weights = variant_weights(folder, "diffusion_pytorch_model", None, allow_pickle)
    return build_controlnet(config, weights, pipe.dtype)


# --- one run ------------------------------------------------------------------------------------


class ControlRun:
    """A ControlNet's part in one generation: the control embedding (computed once), the per-step scale, and
    the residuals each step adds to the UNet."""

    def __init__(self, net: ControlNetModel, pixels: np.ndarray, control, steps: int, cfg: bool):
        with paddle.no_grad():
            self.condition = net.embed_condition(paddle.to_tensor(pixels, dtype=net.conv_in.weight.dtype))
        self.net = net
        self.scales = [control.scale * keep(i, steps, control.start, control.end) for i in range(steps)]
        # global_pool_conditions turns on diffusers' guess mode: with guidance, only the prompt half goes through
        # the ControlNet, and the negative half gets no residuals.
        self.prompt_half_only = cfg and net.config.global_pool_conditions

    def residuals(self, step: int, x: paddle.Tensor, t: float, cond: dict) -> dict:
        """The UNet's extra keyword arguments at step ``step`` for its input ``x`` and conditioning ``cond``."""
        scale = self.scales[step]
        if scale == 0.0:  # the residuals would all be zero: skip the ControlNet
            return {}
        if self.prompt_half_only:
            half = x.shape[0] // 2
            x, cond = x[half:], {k: v[half:] for k, v in cond.items()}
        with paddle.no_grad():
            down, mid = self.net(x, t, condition=self.condition, scale=scale, **cond)
        if self.prompt_half_only:
            down, mid = [_zeros_before(d) for d in down], _zeros_before(mid)
        return {"down_residuals": down, "mid_residual": mid}


def _zeros_before(x: paddle.Tensor) -> paddle.Tensor:
    return paddle.concat([paddle.zeros_like(x), x])
