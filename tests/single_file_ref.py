"""Test-side writer: a diffusers folder (from ``sd_ref``) saved as one single-file checkpoint in the original layout.

The inverse of diffusers' ``single_file_utils`` converters, written as renaming rules on diffusers names:
SD1.5 (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.text_model.*``) and
SDXL (``conditioner.embedders.0.transformer.text_model.*`` for CLIP ViT-L, ``conditioner.embedders.1.model.*`` in
OpenCLIP's layout: fused ``in_proj``, ``text_projection`` stored (in, out), ``positional_embedding``, ``ln_final``).
VAE attention projections are stored as 1x1 convolutions, as the LDM autoencoder has them. Kept independent of
``mixcli.diffusion.single_file`` so the tests can prove it with diffusers' own converters.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

UNET_TOP = {
    "conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0", "conv_out": "out.2",
}  # fmt: skip
UNET_RESNET = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}  # fmt: skip
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPENCLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
            "self_attn.out_proj": "attn.out_proj"}  # fmt: skip
OPENCLIP_TOP = {"embeddings.token_embedding.weight": "token_embedding.weight",
                "embeddings.position_embedding.weight": "positional_embedding",
                "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}  # fmt: skip
UNET, VAE = "model.diffusion_model.", "first_stage_model."
CLIP_PREFIX = {False: "cond_stage_model.transformer.", True: "conditioner.embedders.0.transformer."}  # by sdxl
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."


def _swap_first(rest: str, table: dict[str, str]) -> str:
    """``norm1.weight`` -> ``in_layers.0.weight`` by the table's entry for the leading module name."""
    for ours, theirs in table.items():
        if rest.startswith(ours + "."):
            return theirs + rest[len(ours) :]
    return rest


def unet_name(name: str, layers: int, cross_up: list[bool]) -> str:
    """A UNet2DConditionModel tensor name as ``model.diffusion_model.*`` names it."""
    module, param = name.rsplit(".", 1)
    if module in UNET_TOP:
        return f"{UNET}{UNET_TOP[module]}.{param}"
    stride = layers + 1
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        slot = f"0.{_swap_first(rest, UNET_RESNET)}" if kind == "resnets" else f"1.{rest}"
        return f"{UNET}input_blocks.{1 + i * stride + j}.{slot}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", name):
        return f"{UNET}input_blocks.{1 + int(m[1]) * stride + layers}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", name):
        return f"{UNET}middle_block.{2 * int(m[1])}.{_swap_first(m[2], UNET_RESNET)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", name):
        return f"{UNET}middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        slot = f"0.{_swap_first(rest, UNET_RESNET)}" if kind == "resnets" else f"1.{rest}"
        return f"{UNET}output_blocks.{i * stride + j}.{slot}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", name):
        i = int(m[1])
        return f"{UNET}output_blocks.{i * stride + layers}.{2 if cross_up[i] else 1}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet tensor {name}")


def vae_name(name: str, blocks: int) -> str:
    """An AutoencoderKL tensor name as ``first_stage_model.*`` names it."""
    name = name.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name):
        return f"{VAE}encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", name):
        return f"{VAE}encoder.down.{m[1]}.downsample.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name):
        return f"{VAE}decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", name):
        return f"{VAE}decoder.up.{blocks - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", name):
        return f"{VAE}{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", name):
        return f"{VAE}{m[1]}.mid.attn_1.{_swap_first(m[2], VAE_ATTENTION)}"
    return VAE + name


def _load(folder: Path, stem: str, fp16: bool) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / f"{stem}{'.fp16' if fp16 else ''}.safetensors"))


def folder_components(folder: Path, fp16: bool = False) -> tuple[dict[str, dict], dict[str, dict]]:
    """The tensors (torch) and config.json of each model component of an sd_ref folder."""
    folder = Path(folder)
    parts = [p for p in ("unet", "vae", "text_encoder", "text_encoder_2") if (folder / p).is_dir()]
    stems = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model"}
    tensors = {p: _load(folder / p, stems.get(p, "model"), fp16) for p in parts}
    configs = {p: json.loads((folder / p / "config.json").read_text()) for p in parts}
    return tensors, configs


def _unet(tensors: dict, config: dict) -> dict:
    cross_up = ["CrossAttn" in kind for kind in config["up_block_types"]]
    return {unet_name(k, config["layers_per_block"], cross_up): v for k, v in tensors.items()}


def _vae(tensors: dict, config: dict) -> dict:
    out = {}
    for name, value in tensors.items():
        if ".attentions." in name and name.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the LDM autoencoder's attention uses 1x1 convolutions
        out[vae_name(name, len(config["block_out_channels"]))] = value
    return out


def _clip(tensors: dict, prefix: str, legacy: bool) -> dict:
    """CLIP ViT-L in transformers' layout (older LDM files lack the ``text_model.`` level)."""
    level = "" if legacy else "text_model."
    return {prefix + level + k.removeprefix("text_model."): v for k, v in tensors.items()}


def _open_clip(tensors: dict) -> dict:
    """CLIPTextModelWithProjection in OpenCLIP's layout: q/k/v fused, text_projection transposed."""
    import torch

    tensors = {k.removeprefix("text_model."): v for k, v in tensors.items()}
    out = {}
    for name, value in tensors.items():
        if m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", name):
            parts = [tensors[f"encoder.layers.{m[1]}.self_attn.{p}_proj.{m[2]}"] for p in "qkv"]
            out[f"transformer.resblocks.{m[1]}.attn.in_proj_{m[2]}"] = torch.cat(parts)
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", name):
            if m[2] not in ("self_attn.k_proj", "self_attn.v_proj"):
                out[f"transformer.resblocks.{m[1]}.{OPENCLIP[m[2]]}.{m[3]}"] = value
        elif name == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        else:
            out[OPENCLIP_TOP[name]] = value
    return {OPEN_CLIP_PREFIX + k: v for k, v in out.items()}


def to_ldm(tensors: dict[str, dict], configs: dict[str, dict], legacy_clip: bool = False) -> dict:
    """Diffusers-named components -> one original-layout state dict (SDXL when there is a text_encoder_2)."""
    sdxl = "text_encoder_2" in tensors
    state = {**_unet(tensors["unet"], configs["unet"]), **_vae(tensors["vae"], configs["vae"])}
    state |= _clip(tensors["text_encoder"], CLIP_PREFIX[sdxl], legacy_clip)
    if sdxl:
        state |= _open_clip(tensors["text_encoder_2"])
    return state


def _extras(state: dict, sdxl: bool) -> dict:
    """What real files carry beside the components: EMA copies, the DDPM schedule, CLIP position ids."""
    import torch

    extras = {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1000, dtype=torch.int32)}
    for name, value in state.items():
        if name.startswith(UNET):  # EMA names drop the dots: model_ema.diffusion_modelinput_blocks00weight
            extras["model_ema." + "".join(name.split(".")[1:])] = value.clone()
    extras["alphas_cumprod"] = torch.linspace(0.999, 0.005, 1000)
    extras["betas"] = torch.linspace(0.00085, 0.012, 1000)
    extras[CLIP_PREFIX[sdxl] + "text_model.embeddings.position_ids"] = torch.arange(77)[None]
    if sdxl:
        extras[OPEN_CLIP_PREFIX + "logit_scale"] = torch.tensor(4.6052)
    return extras


def ldm_state_dict(folder: Path, *, fp16: bool = False, legacy_clip: bool = False, extras: bool = False) -> dict:
    """The torch state dict of the single-file checkpoint for an sd_ref folder (its fp16 variant with ``fp16``)."""
    tensors, configs = folder_components(folder, fp16)
    state = to_ldm(tensors, configs, legacy_clip)
    return state | _extras(state, "text_encoder_2" in tensors) if extras else state


def write_single_file(folder: Path, path: Path, **options) -> Path:
    """Save ``ldm_state_dict(folder, **options)`` as one .safetensors file."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in ldm_state_dict(folder, **options).items()}
    save_file(state, str(path))
    return Path(path)
