"""Test-side LoRA adapters for the tiny pipelines of ``sd_ref``, made with peft through diffusers' own API
(``add_adapter``, ``save_lora_weights``) with lora_B drawn at random so the adapter visibly changes the image; a
diffusers -> kohya key converter of our own (diffusers' module names with "_", or for the UNet the original SGM
names that kohya's SDXL files use); and diffusers' pipeline with adapters loaded, as the reference image.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sd_ref import reference_pipeline
from single_file_ref import UNET, unet_name

# Attention, feed-forward, the transformers' projections and the resnets' convolutions (LoCon-style 3x3 and 1x1).
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"]
CONV_TARGETS = ["conv1", "conv2", "conv_shortcut", "time_emb_proj"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
KOHYA = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
SD15_KOHYA = {**KOHYA, "text_encoder": "lora_te_"}


def _randomize_b(model, seed: int, std: float) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def write_lora(folder: Path, out: Path, *, seed: int = 0, rank: int = 4, alpha: float | None = None, conv: bool = True,
               text: bool = True, old_names: bool = False, std: float = 0.1) -> Path:  # fmt: skip
    """A LoRA for the pipeline in ``folder`` saved by diffusers' save_lora_weights into ``out``; PEFT's lora_A/lora_B
    names, or with ``old_names`` diffusers' lora.down/lora.up ones. ``alpha`` other than the rank goes into the
    adapter metadata, where diffusers reads it."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from diffusers.utils import convert_state_dict_to_diffusers

    pipe = reference_pipeline(folder)
    config = dict(r=rank, lora_alpha=alpha or rank)
    pipe.unet.add_adapter(LoraConfig(**config, target_modules=UNET_TARGETS + (CONV_TARGETS if conv else [])))
    encoders = {"text_encoder": pipe.text_encoder}
    if getattr(pipe, "text_encoder_2", None) is not None:
        encoders["text_encoder_2"] = pipe.text_encoder_2
    if not text:
        encoders = {}
    for encoder in encoders.values():
        encoder.add_adapter(LoraConfig(**config, target_modules=TEXT_TARGETS))
    for i, model in enumerate([pipe.unet, *encoders.values()]):
        _randomize_b(model, seed * 10 + i, std)
    convert = convert_state_dict_to_diffusers if old_names else dict
    layers = {"unet_lora_layers": convert(get_peft_model_state_dict(pipe.unet))}
    layers |= {f"{name}_lora_layers": convert(get_peft_model_state_dict(m)) for name, m in encoders.items()}
    if alpha is not None:
        layers["unet_lora_adapter_metadata"] = pipe.unet.peft_config["default"].to_dict()
        layers |= {f"{name}_lora_adapter_metadata": m.peft_config["default"].to_dict() for name, m in encoders.items()}
    type(pipe).save_lora_weights(str(out), **layers)
    return Path(out) / "pytorch_lora_weights.safetensors"


KEY = re.compile(r"^(unet|text_encoder|text_encoder_2)\.(.+)\.(lora_A|lora_B|lora\.down|lora\.up)\.weight$")


def to_kohya(file: Path, out: Path, unet_config: dict | None = None, alphas: dict[str, float] | None = None,
             sd15: bool = False) -> Path:  # fmt: skip
    """The diffusers LoRA ``file`` in kohya's format: ``lora_unet_<module>.lora_down.weight`` etc. with every module's
    alpha (``alphas[module]``, default its rank: the same update). With ``unet_config`` the UNet modules take their
    original SGM names (kohya's SDXL files: ``lora_unet_input_blocks_4_1_...``)."""
    import torch
    from safetensors.torch import load_file, save_file

    prefixes = SD15_KOHYA if sd15 else KOHYA
    state = {}
    for key, value in load_file(str(file)).items():
        component, module, part = KEY.fullmatch(key).groups()
        name = prefixes[component] + _kohya_module(component, module, unet_config)
        down = part in ("lora_A", "lora.down")
        state[f"{name}.lora_{'down' if down else 'up'}.weight"] = value
        if down:
            state[f"{name}.alpha"] = torch.tensor(float((alphas or {}).get(module, value.shape[0])))
    save_file(state, str(out))
    return Path(out)


def _kohya_module(component: str, module: str, unet_config: dict | None) -> str:
    if component != "unet":
        module = module if module.startswith("text_model.") else f"text_model.{module}"
    elif unet_config is not None:
        cross_up = ["CrossAttn" in kind for kind in unet_config["up_block_types"]]
        module = unet_name(f"{module}.weight", unet_config["layers_per_block"], cross_up)[len(UNET) : -len(".weight")]
    return module.replace(".", "_")


def unet_config(folder: Path) -> dict:
    return json.loads((Path(folder) / "unet" / "config.json").read_text())


def reference_with_loras(folder: Path, loras: list[tuple[Path, float]], scheduler: str | None = None):
    """diffusers' pipeline for ``folder`` with each LoRA loaded by load_lora_weights at its weight (set_adapters)."""
    pipe = reference_pipeline(folder)
    names = []
    for i, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path), adapter_name=f"lora{i}")
        names.append(f"lora{i}")
    pipe.set_adapters(names, adapter_weights=[weight for _, weight in loras])
    if scheduler == "lcm":
        import diffusers

        pipe.scheduler = diffusers.LCMScheduler.from_config(pipe.scheduler.config)
    elif scheduler == "euler":
        import diffusers

        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    return pipe
