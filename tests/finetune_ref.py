"""Test-side oracle for `mix finetune`: tiny datasets, and transformers + peft + torch's AdamW computing
the same losses, gradients and steps on the same ids, labels and pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from helpers import picture


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_pictures(folder: Path) -> None:
    """a.png (56x56), b.png (84x56), c.png (56x112), small enough for one tile / a few patches."""
    for name, size, seed in (("a.png", (56, 56), 1), ("b.png", (84, 56), 2), ("c.png", (56, 112), 3)):
        picture(*size, seed).save(folder / name)


SINGLE = {"id": "one", "image": "a.png", "conversations": [
    {"from": "human", "value": "<image>\nWhat is in the picture?"},
    {"from": "gpt", "value": "A cat is sitting on a red chair."}]}
MULTI_TURN = {"id": "multi", "image": "b.png", "conversations": [
    {"from": "system", "value": "You are a helpful assistant."},
    {"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": "The sky is blue."},
    {"from": "human", "value": "And the chart?"}, {"from": "gpt", "value": "The chart shows 1, 2, 3 and 10."}]}
SEVERAL_IMAGES = {"id": "images", "images": ["a.png", "c.png"], "conversations": [
    {"from": "human", "value": "Compare <image> and <image>"},
    {"from": "gpt", "value": "The quick brown fox jumps over the lazy dog."}]}
ROWS = {"single": SINGLE, "multi-turn-system": MULTI_TURN, "several-images": SEVERAL_IMAGES}


def cross_entropy(logits, ids: np.ndarray, labels: np.ndarray):
    """torch's mean cross-entropy of (T, V) logits over the positions whose next token is labelled."""
    import torch

    where = torch.from_numpy(np.nonzero(labels[1:] != -100)[0])
    return torch.nn.functional.cross_entropy(logits[:-1][where], torch.from_numpy(ids[1:])[where], reduction="sum")


def peft_model(reference, adapter_dir: Path):
    """peft's LoRA on the transformers model from mix's adapter folder; fails unless every tensor lands."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    keys = {k: config[k] for k in ("r", "lora_alpha", "target_modules", "modules_to_save")}
    model = get_peft_model(reference, LoraConfig(**keys, lora_dropout=0.0))
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, tensors)
    assert not result.unexpected_keys, result.unexpected_keys
    state = model.state_dict()
    for key, value in tensors.items():  # peft skips unknown names silently: each must be in place
        name = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
        assert name in state, f"peft did not apply {key}"
        torch.testing.assert_close(state[name], value, rtol=0, atol=0)
    return model
