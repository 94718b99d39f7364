"""The reference stack's side of `mix bench infer --compare transformers`, run in its own process
(mixcli.bench.sides): transformers (torch, CPU, the same threads) on the same checkpoint, fed the prompt
ids and pixel values mix made (the parity tests hold mix's preprocessing to the reference's), greedy,
forced to the same number of new tokens; each token timed as transformers' streamer receives it.

InternVL2's published checkpoints run upstream as remote code; transformers' own port
(InternVLForConditionalGeneration) loads them through the renaming of its conversion script, which
tests/internvl_ref.py transcribes; so comparing InternVL needs a source checkout.
"""

from __future__ import annotations

import json
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from ..errors import MixError
from .machine import peak_rss_mb

TESTS = Path(__file__).resolve().parents[3] / "tests"
FAMILIES = {"internvl_chat": "internvl", "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_vl"}
EXTRA = "pip install -e '.[test]' (torch, transformers, diffusers, peft: the reference stacks)"


def check_reference(stack: str, folder: Path, extra: tuple[str, ...] = ()) -> list[Path]:
    """The sys.path entries the reference child needs (``extra``: more packages it imports); one clear
    error when it cannot run."""
    missing = [name for name in ("torch", stack, *extra) if find_spec(name) is None]
    if missing:
        raise MixError(f"--compare {stack} needs {' and '.join(missing)}, which are not installed", EXTRA)
    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type", "")
    if model_type not in FAMILIES:
        raise MixError(f"no {stack} reference for '{model_type}' models here", f"compare one of: {', '.join(FAMILIES)}")
    if FAMILIES[model_type] == "internvl" and not (TESTS / "internvl_ref.py").is_file():
        raise MixError("--compare transformers for InternVL needs a source checkout (tests/internvl_ref.py)",
                       "clone the repository and pip install -e '.[test]'")  # fmt: skip
    return [TESTS] if TESTS.is_dir() else []


def save_inputs(prompt, path: Path) -> Path:
    """What the reference is fed: mix's prompt ids and its arrays (pixel values, grids)."""
    arrays = {k: v for k, v in vars(prompt).items() if isinstance(v, np.ndarray)}
    np.savez(path, input_ids=np.asarray([prompt.ids], dtype=np.int64), **arrays)
    return path


class _TokenClock:
    """transformers' streamer protocol: ``put`` gets the prompt first, then each new token."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _internvl(folder: str, inputs: dict):
    from internvl_ref import reference_model

    model = reference_model(folder)
    return model, {"input_ids": inputs["input_ids"], "pixel_values": inputs.get("pixel_values")}


def _qwen2_vl(folder: str, inputs: dict):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    cls = Qwen2_5_VLForConditionalGeneration if config["model_type"] == "qwen2_5_vl" else Qwen2VLForConditionalGeneration
    model = cls.from_pretrained(folder, dtype=torch.float32).eval()
    ids = inputs["input_ids"]
    kept = {"input_ids": ids, "pixel_values": inputs.get("pixel_values"), "image_grid_thw": inputs.get("grid_thw"),
            "mm_token_type_ids": (ids == config["image_token_id"]).astype(np.int64)}  # fmt: skip
    return model, kept


def commands(side: str, folder: str, inputs_file: str, max_new_tokens: str) -> dict:
    """The child's requests: "load" (seconds), "run" (one timed generate), "peak_rss_mb", "versions"."""
    import torch

    from ..runtime import cpu_threads

    torch.set_num_threads(cpu_threads())
    inputs = dict(np.load(inputs_file))
    model_type = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))["model_type"]
    _import_stack(FAMILIES[model_type])  # imports are not load time: mix's side has Paddle imported too
    state: dict = {}

    def load() -> float:
        start = time.perf_counter()
        model, arrays = (_internvl if FAMILIES[model_type] == "internvl" else _qwen2_vl)(folder, inputs)
        state["model"] = model
        state["tensors"] = {k: torch.from_numpy(v) for k, v in arrays.items() if v is not None}
        return time.perf_counter() - start

    def run() -> dict:
        return _generate(state["model"], state["tensors"], int(max_new_tokens))

    return {"load": load, "run": run, "peak_rss_mb": peak_rss_mb, "versions": versions}


def _import_stack(family: str) -> None:
    if family == "internvl":
        import internvl_ref  # noqa: F401
        from transformers import InternVLForConditionalGeneration  # noqa: F401
    else:
        from transformers import Qwen2VLForConditionalGeneration  # noqa: F401


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers")}


def _generate(model, tensors: dict, new_tokens: int) -> dict:
    """One greedy generate of exactly ``new_tokens`` tokens, timed token by token."""
    import torch

    ids = tensors["input_ids"]
    clock = _TokenClock()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**tensors, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None,
                             pad_token_id=0, streamer=clock)  # fmt: skip
    end = time.perf_counter()
    tokens = clock.times[1:]  # the first put is the prompt
    return {
        "ttft_s": tokens[0] - start,
        "token_s": [b - a for a, b in zip(tokens, tokens[1:])],
        "e2e_s": end - start,
        "token_ids": out[0, ids.shape[1]:].tolist(),
    }
