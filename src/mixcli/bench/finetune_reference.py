"""The reference stack's side of `mix bench finetune --compare transformers`, run in its own process
(mixcli.bench.sides): peft's LoRA on the transformers model (torch, CPU, the same threads), started from
mix's starting adapter, trained on mix's rows (token ids, labels, pixel values) step by step with torch's
AdamW, gradient clipping and mix's learning rates: the loop tests/test_finetune.py holds mix's to.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .machine import peak_rss_mb
from .reference import FAMILIES, _import_stack, versions

IGNORE = -100


def reference_model(folder: str, family: str):
    """The transformers model of the checkpoint (float32, CPU)."""
    if family == "internvl":
        from internvl_ref import reference_model as internvl

        return internvl(folder)
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    cls = Qwen2_5_VLForConditionalGeneration if config["model_type"] == "qwen2_5_vl" else Qwen2VLForConditionalGeneration
    return cls.from_pretrained(folder, dtype=torch.float32).eval()


def with_adapter(model, adapter_dir: Path):
    """peft's LoRA from mix's adapter folder, every tensor checked in place (peft skips unknown names)."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    peft = get_peft_model(model, LoraConfig(r=config["r"], lora_alpha=config["lora_alpha"], lora_dropout=0.0,
                                            target_modules=config["target_modules"]))  # fmt: skip
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    set_peft_model_state_dict(peft, tensors)
    state = peft.state_dict()
    for key, value in tensors.items():
        name = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
        if name not in state or not torch.equal(state[name], value):
            raise RuntimeError(f"peft did not apply {key}")
    return peft


def row_tensors(rows: dict, i: int, family: str, image_token_id: int | None) -> dict:
    """Row i's model inputs as the reference takes them."""
    import torch

    ids = rows[f"{i}.input_ids"]
    kept = {"input_ids": ids, "pixel_values": rows.get(f"{i}.pixel_values")}
    if family == "qwen2_vl":
        kept |= {"image_grid_thw": rows.get(f"{i}.grid_thw"), "mm_token_type_ids": (ids == image_token_id).astype(np.int64)}
    return {k: torch.from_numpy(v) for k, v in kept.items() if v is not None}


def summed_cross_entropy(logits, ids: np.ndarray, labels: np.ndarray):
    """Summed cross-entropy of (T, V) logits at the positions whose next token is a label."""
    import torch

    where = torch.from_numpy(np.nonzero(labels[1:] != IGNORE)[0])
    return torch.nn.functional.cross_entropy(logits[:-1][where].float(), torch.from_numpy(ids[1:])[where], reduction="sum")


def commands(side: str, folder: str, workload: str, adapter_dir: str) -> dict:
    """The child's requests: "load" (seconds), "step" (one timed optimizer step), "peak_rss_mb", "versions"."""
    import torch

    from ..runtime import cpu_threads

    torch.set_num_threads(cpu_threads())
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    family = FAMILIES[config["model_type"]]
    _import_stack(family)  # imports are not load time: mix's side has Paddle imported already
    import peft  # noqa: F401

    rows = dict(np.load(Path(workload) / "rows.npz"))
    plan = json.loads((Path(workload) / "plan.json").read_text(encoding="utf-8"))
    state: dict = {"step": 0}

    def load() -> float:
        start = time.perf_counter()
        model = with_adapter(reference_model(folder, family), Path(adapter_dir))
        params = [p for p in model.parameters() if p.requires_grad]
        state.update({"model": model, "params": params,
                  "inputs": [row_tensors(rows, i, family, config.get("image_token_id")) for i in range(plan["rows"])],
                  "optimizer": torch.optim.AdamW(params, lr=plan["lrs"][0], betas=(0.9, 0.999), eps=1e-8,
                                                 weight_decay=plan["weight_decay"])})  # fmt: skip
        return time.perf_counter() - start

    def step() -> dict:
        k = state["step"]
        batch = plan["batches"][k]
        labels = sum(int((rows[f"{i}.labels"][1:] != IGNORE).sum()) for i in batch)
        start = time.perf_counter()
        total = 0.0
        for i in batch:
            logits = state["model"](**state["inputs"][i]).logits[0]
            loss = summed_cross_entropy(logits, rows[f"{i}.input_ids"][0], rows[f"{i}.labels"])
            (loss / labels).backward()
            total += float(loss)
        if plan["max_grad_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(state["params"], plan["max_grad_norm"])
        for group in state["optimizer"].param_groups:
            group["lr"] = plan["lrs"][k]
        state["optimizer"].step()
        state["optimizer"].zero_grad()
        seconds = time.perf_counter() - start
        state["step"] = k + 1
        tokens = sum(rows[f"{i}.input_ids"].shape[1] for i in batch)
        return {"seconds": seconds, "tokens": int(tokens), "loss": total / labels}

    return {"load": load, "step": step, "peak_rss_mb": peak_rss_mb, "versions": lambda: versions() | _peft()}


def _peft() -> dict:
    from importlib.metadata import version

    return {"peft": version("peft")}
