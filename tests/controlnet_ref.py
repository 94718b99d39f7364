"""Test-side oracle for ControlNet: tiny random ControlNets in the diffusers layout and diffusers' own ControlNet
pipelines around the tiny pipelines of sd_ref.

``write_controlnet`` derives a ControlNetModel from a tiny pipeline's UNet as diffusers' ``from_unet`` does (the
encoder's weights copied), then gives the zero-initialised convolutions (the conditioning embedding's
``conv_out``, every ``controlnet_down_blocks`` conv and ``controlnet_mid_block``) random values, so that the
control image visibly changes the picture; ``save_pretrained`` writes config.json and
diffusion_pytorch_model.safetensors as the published ControlNets have them.
"""

from __future__ import annotations

from pathlib import Path

# The tiny pipelines' VAE shrinks 2x, so the conditioning embedding has one stride-2 level (SD1.5's: 8x, three).
TINY_EMBEDDING = (8, 16)


def write_controlnet(pipeline: Path, folder: Path, *, seed: int = 0, std: float = 0.3, **config) -> Path:
    """A random ControlNet for the tiny pipeline at ``pipeline``, saved in ``folder``."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(str(Path(pipeline) / "unet"))
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=TINY_EMBEDDING, **config)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding")):
                param.normal_(0.0, std)
    net.save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)


def reference_controlnet_pipeline(pipe, controlnet_folder: Path, img2img: bool = False):
    """diffusers' ControlNet pipeline from the components of ``pipe`` (sd_ref.reference_pipeline) and a
    ControlNet folder (CPU, float32)."""
    import diffusers

    net = diffusers.ControlNetModel.from_pretrained(str(controlnet_folder)).eval()
    components = {k: v for k, v in pipe.components.items() if k not in ("image_encoder",)}
    xl = "XL" in type(pipe).__name__
    if xl:
        cls = diffusers.StableDiffusionXLControlNetImg2ImgPipeline if img2img else diffusers.StableDiffusionXLControlNetPipeline
        extra = {"add_watermarker": False}
    else:
        cls = diffusers.StableDiffusionControlNetImg2ImgPipeline if img2img else diffusers.StableDiffusionControlNetPipeline
        extra = {"requires_safety_checker": False}
    components = {k: v for k, v in components.items() if k in cls.__init__.__code__.co_varnames}
    out = cls(**components, controlnet=net, **extra)
    out.set_progress_bar_config(disable=True)
    return out
