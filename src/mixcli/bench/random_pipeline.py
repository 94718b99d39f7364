"""`--random-weights` for diffusion pipelines: the published configs of a pipeline (bench/configs/<alias>/:
model_index.json, each component's config.json, the scheduler config, the tokenizer settings) with random
weights in diffusers' layout, so `mix bench generate` (and diffusers, for --compare) run the real
architecture without a download.

Each component's tensor names and shapes are those of mix's own modules built from the config without
allocating them (Paddle's LazyGuard), in torch layout: the modules load diffusers' and transformers'
checkpoints under their own names, which the loader checks strictly, so the names are the authors'
(tests/test_bench_generate.py holds them to diffusers' and transformers' modules built on the meta device).

The tokenizer stand-in is CLIP's byte-level vocabulary without merges, padded to the real vocabulary
size with the start and end tokens at their real ids (49406, 49407): prompts split into more tokens than
the real tokenizer makes, but Stable Diffusion pads or truncates every prompt to 77 tokens, so the text
encoder does the same work.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Callable

import numpy as np

# Component -> its weight file in the diffusers layout.
WEIGHT_FILES = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
                "text_encoder": "model.safetensors", "text_encoder_2": "model.safetensors"}  # fmt: skip
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def pipeline_shapes(source: Path) -> dict[str, dict[str, tuple]]:
    """Per component with weights, every tensor's name and torch-layout shape."""
    return {c: component_shapes(c, _config(source / c / "config.json")) for c in WEIGHT_FILES if (source / c).is_dir()}


def component_shapes(component: str, config: dict) -> dict[str, tuple]:
    """The checkpoint tensors of one component: mix's module built lazily, Linear weights transposed
    back to torch's (out, in)."""
    import paddle

    from ..weights import linear_weight_names

    with paddle.LazyGuard():
        module = _module(component, config)
    linear = linear_weight_names(module)
    return {name: tuple(t.shape[::-1] if name in linear else t.shape) for name, t in module.state_dict().items()}


def _module(component: str, config: dict):
    if component == "unet":
        from ..diffusion.unet import UNet2DConditionModel, UNetConfig

        return UNet2DConditionModel(UNetConfig.from_dict(config))
    if component == "vae":
        from ..diffusion.vae import AutoencoderKL, VAEConfig

        return AutoencoderKL(VAEConfig.from_dict(config))
    from ..diffusion.clip import CLIPTextConfig, CLIPTextEncoder

    projection = "CLIPTextModelWithProjection" in (config.get("architectures") or [])
    return CLIPTextEncoder(CLIPTextConfig.from_dict(config), projection=projection)


def pipeline_bytes(shapes: dict[str, dict[str, tuple]]) -> int:
    return 4 * sum(int(np.prod(s)) for tensors in shapes.values() for s in tensors.values())


def write_pipeline(folder: Path, source: Path, shapes: dict[str, dict[str, tuple]],
                   progress: Callable[[str], None] = lambda line: None, seed: int = 0) -> None:  # fmt: skip
    """The configs copied, each component's float32 safetensors file, the tokenizer stand-in."""
    shutil.copytree(source, folder)
    rng = np.random.default_rng(seed)
    for component, tensors in shapes.items():
        progress(f"  {component}: {4 * sum(int(np.prod(s)) for s in tensors.values()) / 1e9:.2f} GB")
        write_safetensors(folder / component / WEIGHT_FILES[component], tensors, rng)
    for tokenizer in sorted(p for p in folder.iterdir() if p.name.startswith("tokenizer")):
        vocab_size = _config(folder / tokenizer.name.replace("tokenizer", "text_encoder") / "config.json")["vocab_size"]
        write_stand_in_tokenizer(tokenizer, vocab_size)


def write_safetensors(path: Path, shapes: dict[str, tuple], rng: np.random.Generator) -> None:
    """A float32 safetensors file written one tensor at a time (a UNet is 3.4 GB: never all in memory)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        size = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for name, shape in shapes.items():
            f.write(random_tensor(name, shape, rng).tobytes())


def random_tensor(name: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Values that keep activations O(1) through the networks: weights ~ N(0, 1/fan_in) (fan_in of a
    convolution: in channels x kernel), token and position embeddings ~ N(0, 1), norm scales near 1,
    biases near 0."""
    if len(shape) == 1:
        base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
        return (base + 0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    fan_in = 1 if name.endswith(("token_embedding.weight", "position_embedding.weight")) else int(np.prod(shape[1:]))
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(fan_in**-0.5)


def write_stand_in_tokenizer(folder: Path, vocab_size: int) -> None:
    """vocab.json and merges.txt: CLIP's 256 byte symbols, each also ending a word (``</w>``), filler up to
    the vocabulary size, and the start and end tokens last, at the real ids."""
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += [f"<|filler{i}|>" for i in range(vocab_size - 2 - len(tokens))] + [BOS, EOS]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in CLIP's vocabulary order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in keep]  # shifted past 255, in byte order
    return [chr(c) for c in keep] + [chr(256 + i) for i in range(len(others))]


def _config(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
