"""What a run writes as its result: a LoRA adapter in PEFT's layout and key names (peft loads it onto
the transformers model), or for full fine-tuning a checkpoint in the authors' layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..weights import linear_weight_names, save_safetensors

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model
# The checkpoint files besides the weights that a fine-tuned copy keeps.
SIDE_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
              "video_preprocessor_config.json", "chat_template.json", "chat_template.jinja", "tokenizer.json",
              "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt", "special_tokens_map.json",
              "added_tokens.json")  # fmt: skip


def torch_layout(net, names: list[str]) -> dict[str, np.ndarray]:
    """Parameters by this module's names as numpy in torch's layout (Linear weights (out, in))."""
    params = net.state_dict()
    flip = linear_weight_names(net)
    return {n: (params[n].numpy().T.copy() if n in flip else params[n].numpy()) for n in names}


def _saved_modules(model, names: list[str]) -> list[str]:
    """The transformers names of the whole modules trained beside LoRA (peft's modules_to_save): the
    children of the vision tower / projector that hold trained parameters."""
    modules = set()
    for name in names:
        if ".lora_" in name:
            continue
        for prefix in (model.projector_prefix, model.vision_prefix):
            if prefix and name.startswith(prefix):
                child = name[len(prefix):].split(".", 1)[0]
                modules.add(model.hf_name(prefix + child) if prefix != model.projector_prefix else
                            model.hf_name(prefix.rstrip(".")))
                break
    return sorted(modules)


def peft_tensors(model, lora: dict, names: list[str]) -> dict[str, np.ndarray]:
    """adapter_model.safetensors' tensors: lora_A.weight (r, in) and lora_B.weight (out, r) per layer,
    then the fully trained modules' parameters, all under PEFT's names for the transformers model."""
    out = {}
    for name, layer in lora.items():
        base = PEFT_PREFIX + model.hf_name(name)
        out[f"{base}.lora_A.weight"] = layer.lora_A.numpy().T.copy()
        out[f"{base}.lora_B.weight"] = layer.lora_B.numpy().T.copy()
    full = [n for n in names if ".lora_" not in n]
    out.update({PEFT_PREFIX + k: v for k, v in model.hf_tensors(torch_layout(model.net, full)).items()})
    return out


def peft_config(model, lora: dict, names: list[str], method, base_model: str) -> dict:
    """adapter_config.json as peft 0.22 writes it for a LoRA on the transformers model."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": method.rank, "lora_alpha": method.alpha, "lora_dropout": method.dropout,
        "target_modules": sorted(model.hf_name(n) for n in lora), "modules_to_save": _saved_modules(model, names) or None,
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "use_rslora": False, "use_dora": False, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {}, "revision": None,
    }  # fmt: skip


def write_adapter(folder: Path, model, lora: dict, names: list[str], method, base_model: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(peft_tensors(model, lora, names), folder / ADAPTER_WEIGHTS)
    text = json.dumps(peft_config(model, lora, names, method, base_model), indent=2)
    (folder / ADAPTER_CONFIG).write_text(text + "\n", encoding="utf-8")


def write_full(folder: Path, model) -> None:
    """Every parameter in the authors' layout (model.safetensors) with the checkpoint's side files."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(model.net.state_dict())
    save_safetensors(model.authors_tensors(torch_layout(model.net, names)), folder / "model.safetensors")
    for name in SIDE_FILES:
        if (model.path / name).is_file():
            shutil.copyfile(model.path / name, folder / name)


def write_result(folder: Path, model, lora: dict, names: list[str], method, base_model: str) -> None:
    if method.kind == "lora":
        write_adapter(folder, model, lora, names, method, base_model)
    else:
        write_full(folder, model)
