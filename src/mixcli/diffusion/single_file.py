"""Single-file Stable Diffusion checkpoints (original LDM / SGM names) split into diffusers-named components."""

from __future__ import annotations

import math
from collections import Counter
from functools import partial
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from ..errors import CheckpointError
from ..weights import TensorRef

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD15_CLIP = "cond_stage_model.transformer."
SDXL_CLIP = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP = "conditioner.embedders.1.model."
ARCHITECTURES = {"sd15": "SD1.5", "sdxl": "SDXL"}
# Where each architecture keeps its components. Tensors outside these prefixes (model_ema.*, the DDPM
# schedule buffers, ...) are ignored, as diffusers' converters ignore them.
COMPONENT_PREFIXES = {"sd15": (UNET, VAE, "cond_stage_model."), "sdxl": (UNET, VAE, "conditioner.")}
# Leftovers inside those prefixes that diffusers drops too: CLIP's position ids, OpenCLIP's contrastive
# temperature, and its causal mask (a buffer that is rebuilt, never learnt).
IGNORED_SUFFIXES = (".position_ids",)
IGNORED_PREFIXES = (SDXL_OPENCLIP + "logit_scale", SDXL_OPENCLIP + "attn_mask")
# Layouts we recognise but do not run, for a helpful error.
OTHER_LAYOUTS = {
    "cond_stage_model.model.": "Stable Diffusion 2.x (OpenCLIP ViT-H text encoder)",
    "conditioner.embedders.0.model.": "SDXL refiner (OpenCLIP-only conditioner)",
    "model.diffusion_model.joint_blocks.": "Stable Diffusion 3 (MMDiT)",
    "model.diffusion_model.double_blocks.": "Flux",
    "double_blocks.": "Flux",
}

UNET_DOWN = {"DownBlock2D", "CrossAttnDownBlock2D"}
UNET_UP = {"UpBlock2D", "CrossAttnUpBlock2D"}
UNET_MID = "UNetMidBlock2DCrossAttn"
UNET_UNSUPPORTED = ("class_embed_type", "num_class_embeds", "encoder_hid_dim_type", "time_cond_proj_dim")
QKV_WEIGHTS = ("to_q.weight", "to_k.weight", "to_v.weight")  # diffusers' attention projections carry no bias
USE_FOLDER = "use the model's diffusers folder layout"
# diffusers ResnetBlock2D <-> LDM ResBlock (diffusers' update_unet_resnet_ldm_to_diffusers).
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3"}  # fmt: skip
VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
CLIP_LAYER = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
              "layer_norm1", "mlp.fc1", "mlp.fc2", "layer_norm2")  # fmt: skip
OPENCLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "mlp.fc1": "mlp.c_fc",
                  "mlp.fc2": "mlp.c_proj", "layer_norm2": "ln_2"}  # fmt: skip

Adapt = Callable[[TensorRef], TensorRef]
Plan = dict[str, tuple[str, "Adapt | None"]]  # diffusers name -> (original name, how to cut it from there)


# --- detection -------------------------------------------------------------------------------


def detect_architecture(names: Iterable[str]) -> str:
    """"sd15" or "sdxl" from a single-file checkpoint's tensor names; anything else is a CheckpointError."""
    names = list(names)
    has = lambda prefix: any(n.startswith(prefix) for n in names)  # noqa: E731
    if has(UNET) and has(SDXL_OPENCLIP) and has(SDXL_CLIP):
        return "sdxl"
    if has(UNET) and has(SD15_CLIP):
        return "sd15"
    known = [what for prefix, what in OTHER_LAYOUTS.items() if has(prefix)]
    kind = f"it looks like {known[0]}" if known else f"it holds {_summary(names)}"
    raise CheckpointError(
        f"not an SD1.5 or SDXL single-file checkpoint: {kind}",
        "mix runs single files of Stable Diffusion 1.5 and SDXL base; for other models use their diffusers folder",
    )


def _summary(names: list[str], limit: int = 5) -> str:
    """The commonest two-part name prefixes, e.g. ``model.diffusion_model.* (686)``."""
    if not names:
        return "no tensors"
    counts = Counter(".".join(n.split(".")[:2]) for n in names)
    return ", ".join(f"{prefix}.* ({n})" for prefix, n in counts.most_common(limit))


# --- splitting -------------------------------------------------------------------------------


def split_single_file(
    checkpoint: Mapping[str, TensorRef],
    architecture: str,
    unet_config: dict,
    vae_config: dict,
    text_configs: dict[str, dict],
) -> dict[str, dict[str, TensorRef]]:
    """The components of a single-file checkpoint under the names of the diffusers folder files.

    Returns ``{"unet": ..., "vae": ..., "text_encoder": ...}`` (plus ``"text_encoder_2"`` for SDXL),
    each a dict of diffusers/transformers name -> TensorRef. Nothing is read: renamed tensors are
    the checkpoint's own references; reshaped, transposed or split ones read their source when asked.
    Tensors missing for the configs, or unexpected in the components' prefixes, raise CheckpointError.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {list(ARCHITECTURES)}, not {architecture!r}")
    plans = _plans(checkpoint, architecture, unet_config, vae_config, text_configs)
    _check(checkpoint, architecture, plans)
    return {component: _materialize(plan, checkpoint) for component, plan in plans.items()}


def _plans(checkpoint: Mapping, architecture: str, unet: dict, vae: dict, texts: dict[str, dict]) -> dict[str, Plan]:
    wanted = ("text_encoder", "text_encoder_2") if architecture == "sdxl" else ("text_encoder",)
    lacking = [c for c in wanted if c not in texts]
    if lacking:
        raise ValueError(f"text_configs needs {', '.join(lacking)} for {ARCHITECTURES[architecture]}")
    clip_prefix = SDXL_CLIP if architecture == "sdxl" else SD15_CLIP
    # Old LDM files hold CLIP-L without transformers' `text_model.` level (cond_stage_model.transformer.embeddings.*).
    if any(n.startswith(clip_prefix + "text_model.") for n in checkpoint):
        clip_prefix += "text_model."
    plans = {"unet": _unet_plan(unet), "vae": _vae_plan(vae)}
    plans["text_encoder"] = _clip_plan(texts["text_encoder"], clip_prefix)
    if architecture == "sdxl":
        plans["text_encoder_2"] = _open_clip_plan(texts["text_encoder_2"], SDXL_OPENCLIP)
    return plans


def _ignored(name: str) -> bool:
    return name.endswith(IGNORED_SUFFIXES) or name.startswith(IGNORED_PREFIXES)


def _check(checkpoint: Mapping, architecture: str, plans: dict[str, Plan]) -> None:
    """Every tensor the configs need is there, and nothing else sits in the components' prefixes."""
    where = _where(checkpoint)
    arch = ARCHITECTURES[architecture]
    for component, plan in plans.items():
        missing = list(dict.fromkeys(src for src, _ in plan.values() if src not in checkpoint))
        if missing:
            raise CheckpointError(
                f"{where} lacks {len(missing)} tensors of the {arch} {component}: {_names(missing)}",
                "the file is incomplete or holds another model; re-download it, or pass the configs it was made for",
            )
    used = {src for plan in plans.values() for src, _ in plan.values()}
    prefixes = COMPONENT_PREFIXES[architecture]
    unexpected = [n for n in checkpoint if n.startswith(prefixes) and n not in used and not _ignored(n)]
    if unexpected:
        raise CheckpointError(
            f"{where} holds {len(unexpected)} tensors an {arch} model with these configs lacks: {_names(unexpected)}",
            "the component configs do not match the file (an inpainting, SD 2.x or otherwise changed model?); "
            "pass the configs of the model it was fine-tuned from",
        )


def _where(checkpoint: Mapping) -> str:
    files = getattr(checkpoint, "files", None)
    return files[0].name if files else "the checkpoint"


def _names(names: list[str], limit: int = 4) -> str:
    more = f", … {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _materialize(plan: Plan, checkpoint: Mapping[str, TensorRef]) -> dict[str, TensorRef]:
    return {name: adapt(checkpoint[src]) if adapt else checkpoint[src] for name, (src, adapt) in plan.items()}


# --- cutting tensors (lazily) ------------------------------------------------------------------


def _squeeze_1x1(ref: TensorRef) -> TensorRef:
    """A 1x1 convolution kernel (out, in, 1[, 1]) as a Linear weight (out, in): diffusers' conv_attn_to_linear."""
    if len(ref.shape) == 2:
        return ref
    shape = ref.shape[:2]
    if len(ref.shape) not in (3, 4) or math.prod(ref.shape[2:]) != 1:
        raise CheckpointError(f"a VAE attention weight has shape {list(ref.shape)}, not 1x1", "re-download the file")
    return TensorRef(shape, ref.dtype, lambda: ref.raw().reshape(shape))


def _transpose(ref: TensorRef) -> TensorRef:
    """OpenCLIP's text_projection is stored (in, out); transformers' Linear weight is (out, in)."""
    return TensorRef(ref.shape[::-1], ref.dtype, lambda: np.ascontiguousarray(ref.raw().T))


def _third(index: int, ref: TensorRef) -> TensorRef:
    """Rows of q, k or v from a fused ``in_proj`` (3H, ...): a view, no copy."""
    rows, rest = divmod(ref.shape[0], 3)
    if rest:
        raise CheckpointError(f"a fused attention in_proj has {ref.shape[0]} rows, not 3 x hidden", "re-download the file")
    return TensorRef((rows, *ref.shape[1:]), ref.dtype, lambda: ref.raw()[index * rows : (index + 1) * rows])


# --- UNet ------------------------------------------------------------------------------------


def _pairs(diffusers: str, original: str, params: Iterable[str] = ("weight", "bias")) -> Iterator[tuple[str, str]]:
    return ((f"{diffusers}.{p}", f"{original}.{p}") for p in params)


def _per_block(value, blocks: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * blocks


def _check_unet_config(config: dict) -> None:
    """Refuse UNet options that have no place in an SD1.5/SDXL file (class embeddings, LCM's cond_proj, ...)."""
    odd = {k: config.get(k) for k in UNET_UNSUPPORTED}
    if config.get("addition_embed_type") not in (None, "text_time"):
        odd["addition_embed_type"] = config["addition_embed_type"]
    if config.get("mid_block_type", UNET_MID) != UNET_MID:
        odd["mid_block_type"] = config["mid_block_type"]
    if not set(config["down_block_types"]) <= UNET_DOWN or not set(config["up_block_types"]) <= UNET_UP:
        odd["block types"] = [*config["down_block_types"], *config["up_block_types"]]
    found = ", ".join(f"{k}={v!r}" for k, v in odd.items() if v is not None)
    if found:
        raise CheckpointError(f"single-file loading covers SD1.5/SDXL UNets, not one with {found}", USE_FOLDER)


def _unet_resnet(diffusers: str, original: str, shortcut: bool) -> Iterator[tuple[str, str]]:
    for ours, theirs in UNET_RESNET.items():
        yield from _pairs(f"{diffusers}.{ours}", f"{original}.{theirs}")
    if shortcut:
        yield from _pairs(f"{diffusers}.conv_shortcut", f"{original}.skip_connection")


def _transformer(diffusers: str, original: str, depth: int) -> Iterator[tuple[str, str]]:
    """A Transformer2DModel: the LDM SpatialTransformer uses the same names inside, so only the prefix moves."""
    names = ["norm", "proj_in", "proj_out"]
    for k in range(depth):
        block = f"transformer_blocks.{k}"
        names += [f"{block}.norm1", f"{block}.norm2", f"{block}.norm3", f"{block}.ff.net.0.proj", f"{block}.ff.net.2"]
        names += [f"{block}.{attn}.to_out.0" for attn in ("attn1", "attn2")]
        for attn in ("attn1", "attn2"):
            yield from _pairs(f"{diffusers}.{block}.{attn}", f"{original}.{block}.{attn}", QKV_WEIGHTS)
    for name in names:
        yield from _pairs(f"{diffusers}.{name}", f"{original}.{name}")


def _unet_plan(config: dict) -> Plan:
    """UNet2DConditionModel names <- ``model.diffusion_model.*`` (diffusers' convert_ldm_unet_checkpoint)."""
    _check_unet_config(config)
    return {ours: (UNET + theirs, None) for ours, theirs in _unet_pairs(config)}


def unet_original_names(config: dict) -> dict[str, str]:
    """diffusers UNet tensor name -> its name in the original LDM/SGM UNet (``input_blocks.1.0.in_layers.2.weight``),
    the names kohya's SDXL LoRAs are keyed by; empty for UNets no single file holds."""
    try:
        _check_unet_config(config)
    except CheckpointError:
        return {}
    return dict(_unet_pairs(config))


def _unet_pairs(config: dict) -> Iterator[tuple[str, str]]:
    channels = list(config["block_out_channels"])
    blocks = len(channels)
    layers = _per_block(config["layers_per_block"], blocks)
    depth = _per_block(config.get("transformer_layers_per_block", 1), blocks)
    up_depth = config.get("reverse_transformer_layers_per_block") or depth[::-1]
    yield from _pairs("conv_in", "input_blocks.0.0")
    yield from _pairs("time_embedding.linear_1", "time_embed.0")
    yield from _pairs("time_embedding.linear_2", "time_embed.2")
    if config.get("addition_embed_type") == "text_time":
        yield from _pairs("add_embedding.linear_1", "label_emb.0.0")
        yield from _pairs("add_embedding.linear_2", "label_emb.0.2")
    yield from _unet_down(config["down_block_types"], channels, layers, depth)
    yield from _unet_resnet("mid_block.resnets.0", "middle_block.0", False)
    yield from _transformer("mid_block.attentions.0", "middle_block.1", _depth(depth[-1], 0))
    yield from _unet_resnet("mid_block.resnets.1", "middle_block.2", False)
    yield from _unet_up(config["up_block_types"], channels, layers[::-1], up_depth)
    yield from _pairs("conv_norm_out", "out.0")
    yield from _pairs("conv_out", "out.2")


def _depth(entry, layer: int) -> int:
    """transformer_layers_per_block entries are a count, or (reverse_...) a count per layer."""
    return entry[layer] if isinstance(entry, (list, tuple)) else entry


def _unet_down(types: list[str], channels: list[int], layers: list[int], depth: list) -> Iterator[tuple[str, str]]:
    """input_blocks.N: N=0 is conv_in, then each down block's resnets (+ attention), then its downsampler."""
    index, out_ch = 1, channels[0]
    for i, kind in enumerate(types):
        in_ch, out_ch = out_ch, channels[i]
        for j in range(layers[i]):
            ours, theirs = f"down_blocks.{i}", f"input_blocks.{index}"
            yield from _unet_resnet(f"{ours}.resnets.{j}", f"{theirs}.0", (in_ch if j == 0 else out_ch) != out_ch)
            if "CrossAttn" in kind:
                yield from _transformer(f"{ours}.attentions.{j}", f"{theirs}.1", _depth(depth[i], j))
            index += 1
        if i < len(types) - 1:
            yield from _pairs(f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{index}.0.op")
            index += 1


def _unet_up(types: list[str], channels: list[int], layers: list[int], depth: list) -> Iterator[tuple[str, str]]:
    """output_blocks.N: each up block's layers+1 resnets (+ attention); the last also holds the upsampler."""
    index, reverse = 0, channels[::-1]
    prev = reverse[0]
    for i, kind in enumerate(types):
        out_ch, skip_ch, count = reverse[i], reverse[min(i + 1, len(types) - 1)], layers[i] + 1
        for j in range(count):
            in_ch = (prev if j == 0 else out_ch) + (skip_ch if j == count - 1 else out_ch)  # concatenated skip
            ours, theirs, slot = f"up_blocks.{i}", f"output_blocks.{index}", 1
            yield from _unet_resnet(f"{ours}.resnets.{j}", f"{theirs}.0", in_ch != out_ch)
            if "CrossAttn" in kind:
                yield from _transformer(f"{ours}.attentions.{j}", f"{theirs}.1", _depth(depth[i], j))
                slot = 2
            if j == count - 1 and i < len(types) - 1:
                yield from _pairs(f"{ours}.upsamplers.0.conv", f"{theirs}.{slot}.conv")
            index += 1
        prev = out_ch


# --- VAE -------------------------------------------------------------------------------------


def _vae_plan(config: dict) -> Plan:
    """AutoencoderKL names <- ``first_stage_model.*`` (diffusers' convert_ldm_vae_checkpoint)."""
    blocks = (config.get("down_block_types", []), config.get("up_block_types", []))
    if set(blocks[0]) != {"DownEncoderBlock2D"} or set(blocks[1]) != {"UpDecoderBlock2D"}:
        raise CheckpointError(f"single-file loading covers the SD/SDXL VAE, not blocks {blocks}", USE_FOLDER)
    plan: Plan = {}
    for ours, theirs in _vae_pairs(config):
        squeeze = ".mid_block.attentions." in ours and ours.endswith(".weight") and ".group_norm." not in ours
        plan[ours] = (VAE + theirs, _squeeze_1x1 if squeeze else None)
    return plan


def _vae_resnet(diffusers: str, original: str, shortcut: bool) -> Iterator[tuple[str, str]]:
    for ours, theirs in VAE_RESNET.items():
        yield from _pairs(f"{diffusers}.{ours}", f"{original}.{theirs}")
    if shortcut:
        yield from _pairs(f"{diffusers}.conv_shortcut", f"{original}.nin_shortcut")


def _vae_mid(part: str, attention: bool) -> Iterator[tuple[str, str]]:
    yield from _vae_resnet(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", False)
    if attention:
        for ours, theirs in VAE_ATTENTION.items():
            yield from _pairs(f"{part}.mid_block.attentions.0.{ours}", f"{part}.mid.attn_1.{theirs}")
    yield from _vae_resnet(f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", False)


def _vae_pairs(config: dict) -> Iterator[tuple[str, str]]:
    channels, layers = list(config["block_out_channels"]), config["layers_per_block"]
    blocks, attention = len(channels), config.get("mid_block_add_attention", True)
    for part in ("encoder", "decoder"):
        yield from _pairs(f"{part}.conv_in", f"{part}.conv_in")
        yield from _pairs(f"{part}.conv_norm_out", f"{part}.norm_out")
        yield from _pairs(f"{part}.conv_out", f"{part}.conv_out")
    out_ch = channels[0]
    for i in range(blocks):
        in_ch, out_ch = out_ch, channels[i]
        for j in range(layers):
            shortcut = (in_ch if j == 0 else out_ch) != out_ch
            yield from _vae_resnet(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", shortcut)
        if i < blocks - 1:
            yield from _pairs(f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv")
    yield from _vae_mid("encoder", attention)
    yield from _vae_mid("decoder", attention)
    prev = channels[-1]
    for i, out_ch in enumerate(channels[::-1]):
        stage = blocks - 1 - i  # the LDM decoder numbers its stages from the highest resolution
        for j in range(layers + 1):
            shortcut = (prev if j == 0 else out_ch) != out_ch
            yield from _vae_resnet(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{stage}.block.{j}", shortcut)
        if i < blocks - 1:
            yield from _pairs(f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{stage}.upsample.conv")
        prev = out_ch
    if config.get("use_quant_conv", True):
        yield from _pairs("quant_conv", "quant_conv")
    if config.get("use_post_quant_conv", True):
        yield from _pairs("post_quant_conv", "post_quant_conv")


# --- text encoders ---------------------------------------------------------------------------


def _clip_names(config: dict) -> list[str]:
    """A transformers CLIPTextModel's tensor names, without the ``text_model.`` level."""
    names = ["embeddings.token_embedding.weight", "embeddings.position_embedding.weight"]
    for i in range(config["num_hidden_layers"]):
        names += [f"encoder.layers.{i}.{part}.{p}" for part in CLIP_LAYER for p in ("weight", "bias")]
    return names + ["final_layer_norm.weight", "final_layer_norm.bias"]


def _wrapped(config: dict) -> str:
    """transformers 5 saves CLIPTextModel flat but CLIPTextModelWithProjection under ``text_model.``."""
    return "text_model." if "CLIPTextModelWithProjection" in (config.get("architectures") or []) else ""


def _clip_plan(config: dict, prefix: str) -> Plan:
    """CLIP ViT-L in transformers' layout, names kept below ``prefix`` (diffusers' convert_ldm_clip_checkpoint)."""
    top = _wrapped(config)
    return {top + name: (prefix + name, None) for name in _clip_names(config)}


def _open_clip_plan(config: dict, prefix: str) -> Plan:
    """OpenCLIP ViT-bigG -> CLIPTextModelWithProjection (diffusers' convert_open_clip_checkpoint):
    fused ``in_proj`` split into q/k/v, ``text_projection`` (in, out) transposed."""
    plan: Plan = {
        "text_model.embeddings.token_embedding.weight": (prefix + "token_embedding.weight", None),
        "text_model.embeddings.position_embedding.weight": (prefix + "positional_embedding", None),
    }
    for i in range(config["num_hidden_layers"]):
        ours, theirs = f"text_model.encoder.layers.{i}", f"{prefix}transformer.resblocks.{i}"
        for p in ("weight", "bias"):
            for k, qkv in enumerate(("q_proj", "k_proj", "v_proj")):
                plan[f"{ours}.self_attn.{qkv}.{p}"] = (f"{theirs}.attn.in_proj_{p}", partial(_third, k))
            for name, original in OPENCLIP_LAYER.items():
                plan[f"{ours}.{name}.{p}"] = (f"{theirs}.{original}.{p}", None)
    for p in ("weight", "bias"):
        plan[f"text_model.final_layer_norm.{p}"] = (f"{prefix}ln_final.{p}", None)
    plan["text_projection.weight"] = (prefix + "text_projection", _transpose)
    return plan
