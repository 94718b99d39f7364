"""Test-side LoRA adapters for the vision-language models, made by peft on the transformers references
(lora_B randomised so they visibly change the logits), and edited copies of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Every linear layer of the language model, under the transformers 5 names peft sees.
LANGUAGE_LINEAR = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def peft_adapter(model, out: Path, seed: int = 0, std: float = 0.1, **config):
    """``model`` wrapped by peft with LoraConfig(**config), its lora_B (zero at peft's init) and any
    modules_to_save copies randomised so the adapter changes the logits, saved to ``out``; the peft model."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # peft draws lora_A from torch's global generator
    wrapped = get_peft_model(model, LoraConfig(**config))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(torch.randn(param.shape, generator=generator) * std)
    wrapped.save_pretrained(str(out))
    return wrapped.eval()


def peft_merged(model, adapter: Path):
    """``model`` with the saved adapter loaded by peft and merged (merge_and_unload)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()


def edit_adapter(adapter: Path, copy: Path, config: dict | None = None, tensors=None) -> Path:
    """A copy of an adapter folder, ``config`` merged into adapter_config.json and ``tensors(dict) -> dict``
    applied to its tensors (numpy, peft's names)."""
    from safetensors.numpy import load_file, save_file

    copy.mkdir()
    data = json.loads((adapter / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**data, **(config or {})}))
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    save_file(tensors(weights) if tensors else weights, str(copy / "adapter_model.safetensors"))
    return copy


def transposed_pairs(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """lora_A' = B.T, lora_B' = A.T: with fan_in_fan_out, (B' @ A').T is the original B @ A."""
    out = dict(weights)
    for name, value in weights.items():
        if name.endswith(".lora_A.weight"):
            partner = name.replace(".lora_A.", ".lora_B.")
            out[name], out[partner] = weights[partner].T.copy(), value.T.copy()
    return out
