"""LoRA adapters for Stable Diffusion, merged into the weights at load (so a step costs what it did without them):
diffusers/PEFT files as ``save_lora_weights`` writes them and kohya/A1111 files, for the UNet (attention,
feed-forward and, where the file has them, convolutions) and the text encoders."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import CheckpointError, MixError
from .loading import PipelineParts

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"  # what save_lora_weights writes into a folder
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
# Key prefixes -> component: kohya's (module names with "_" for ".") and diffusers' (dotted module names).
PREFIXES = (
    ("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"), ("lora_te_", "text_encoder"),
    ("unet.", "unet"), ("text_encoder_2.", "text_encoder_2"), ("text_encoder.", "text_encoder"),
)  # fmt: skip
# MODULE + one of: PEFT's lora_A/lora_B, diffusers' lora.down/up (and older to_q_lora.down, lora_linear_layer.down),
# kohya's lora_down/lora_up, or a module's alpha.
KEY = re.compile(
    r"^(?P<module>.+?)(?:\.lora_(?P<peft>[AB])(?:\.default)?\.weight"
    r"|[._]lora(?:_linear_layer)?\.(?P<diffusers>down|up)\.weight"
    r"|\.lora_(?P<kohya>down|up)\.weight|\.(?P<alpha>alpha))$"
)
# diffusers' attention-processor LoRAs (before PEFT) name the projection, not the module (_convert_unet_lora_key).
LEGACY_MODULES = [
    (re.compile(r"\.processor\.to_([qkv])$"), r".to_\1"),
    (re.compile(r"\.processor\.to_out$"), ".to_out.0"),
    (re.compile(r"\.self_attn\.to_([qkv])$"), r".self_attn.\1_proj"),
    (re.compile(r"\.self_attn\.to_out$"), ".self_attn.out_proj"),
]
PEFT_DEFAULT_ALPHA = 8  # peft.LoraConfig's lora_alpha when adapter metadata leaves it out
CROSS_ATTENTION = re.compile(r"attn2[._]to_k$")
ARCHITECTURE_BY_WIDTH = {768: "SD1.5", 1024: "SD2.x", 2048: "SDXL"}  # text width the UNet cross-attends to
NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}


@dataclass(frozen=True)
class LoraSpec:
    """One ``--lora FILE_OR_DIR[:WEIGHT]``: the adapter and how much of its update to add."""

    path: str
    weight: float = 1.0


@dataclass
class LoraLayer:
    """One adapted module: W + weight * (alpha / rank) * up @ down."""

    down: np.ndarray  # (rank, in[, kh, kw])
    up: np.ndarray  # (out, rank[, 1, 1])
    alpha: float | None  # None: alpha = rank

    @property
    def rank(self) -> int:
        return self.down.shape[0]


def parse_spec(text: str) -> LoraSpec:
    """``FILE_OR_DIR[:WEIGHT]``; a path that exists as given keeps its colons. ValueError for a bad WEIGHT."""
    if ":" not in text or Path(text).exists():
        return LoraSpec(text)
    path, _, weight = text.rpartition(":")
    try:
        value = float(weight)
    except ValueError:
        raise ValueError(f"'{weight}' in '{text}' is not a weight; use FILE[:WEIGHT], e.g. style.safetensors:0.8") from None
    if not path or not math.isfinite(value):
        raise ValueError(f"'{text}' is not FILE[:WEIGHT]; e.g. style.safetensors:0.8")
    return LoraSpec(path, value)


# --- reading an adapter ----------------------------------------------------------------------------


def adapter_file(path: str | Path) -> Path:
    """The weights file of a LoRA given as a file or as a folder holding pytorch_lora_weights.safetensors (or .bin)."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in (DIFFUSERS_FILE, "pytorch_lora_weights.bin"):
            if (path / name).is_file():
                return path / name
        raise MixError(f"the LoRA folder {path} has no {DIFFUSERS_FILE}", "pass the adapter's .safetensors file itself")
    if not path.is_file():
        raise MixError(f"the LoRA {path} does not exist", "check the path given to --lora")
    return path


def _split_key(key: str) -> tuple[str, str, str] | None:
    """(component, module, part) of a LoRA tensor name, part being "down", "up" or "alpha"; None if it is not one."""
    match = KEY.match(key)
    if match is None:
        return None
    direction = match["peft"] and {"A": "down", "B": "up"}[match["peft"]]
    part = direction or match["diffusers"] or match["kohya"] or "alpha"
    module = match["module"]
    component = "unet"  # diffusers' oldest UNet-only files carry no prefix; diffusers loads them into the UNet
    for prefix, name in PREFIXES:
        if module.startswith(prefix):
            component, module = name, module[len(prefix) :]
            break
    for pattern, repl in LEGACY_MODULES:
        module = pattern.sub(repl, module)
    return component, module, part


def _metadata(file: Path) -> dict:
    """PEFT's adapter settings that diffusers' save_lora_weights may store in the header (lora_adapter_metadata)."""
    from ..weights import safetensors_metadata

    if file.suffix != ".safetensors":
        return {}
    text = safetensors_metadata(file).get("lora_adapter_metadata")
    try:
        return json.loads(text) if text else {}
    except ValueError as e:
        raise CheckpointError(f"{file.name} has unreadable lora_adapter_metadata ({e})", "re-download the LoRA") from e


def _metadata_alpha(metadata: dict, component: str, module: str, rank: int) -> float | None:
    """The alpha PEFT's LoraConfig gives a module: lora_alpha, an alpha_pattern entry, rsLoRA's sqrt(rank)."""
    config = {k[len(component) + 1 :]: v for k, v in metadata.items() if k.startswith(component + ".")}
    if not config:
        return None
    alpha = float(config.get("lora_alpha", PEFT_DEFAULT_ALPHA))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):  # peft's get_pattern_key
            alpha = float(value)
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha  # rsLoRA scales by alpha / sqrt(rank)


def _names(names: list[str], limit: int = 3) -> str:
    more = f", … {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def read_adapter(path: str | Path, allow_pickle: bool = False) -> dict[tuple[str, str], LoraLayer]:
    """The layers of a LoRA file by (component, module as the file names it)."""
    from ..weights import open_checkpoint

    file = adapter_file(path)
    tensors = open_checkpoint(file, allow_pickle=allow_pickle)
    grouped: dict[tuple[str, str], dict] = {}
    others = []
    for key, ref in tensors.items():
        split = _split_key(key)
        if split is None:
            others.append(key)
        else:
            grouped.setdefault(split[:2], {})[split[2]] = ref
    if not any("down" in parts for parts in grouped.values()):
        problem = f"{file.name} is not a LoRA: it has no lora_down/lora_up (lora_A/lora_B) tensors"
        raise MixError(problem, "pass a LoRA adapter file")
    if others:
        raise MixError(
            f"{file.name} holds {len(others)} tensors mix cannot apply ({_names(others)})",
            "mix applies plain LoRA (diffusers/PEFT or kohya); LyCORIS LoHa/LoKr and DoRA are not supported",
        )
    return _layers(grouped, _metadata(file), file.name)


def _layers(grouped: dict, metadata: dict, name: str) -> dict[tuple[str, str], LoraLayer]:
    layers = {}
    for (component, module), parts in grouped.items():
        if "down" not in parts or "up" not in parts:
            half = "down" if "down" in parts else "up"
            raise MixError(f"{name}: {component}.{module} has only a LoRA {half} weight", "re-download the LoRA")
        down, up = (parts[p].numpy().astype(np.float32) for p in ("down", "up"))
        alpha = float(parts["alpha"].numpy().reshape(-1)[0]) if "alpha" in parts else None
        if alpha is None:
            alpha = _metadata_alpha(metadata, component, module, down.shape[0])
        layers[component, module] = LoraLayer(down, up, alpha)
    return layers


# --- matching it to the model ---------------------------------------------------------------------


def module_index(component: str, weights: Mapping, unet_config: dict) -> dict[str, str]:
    """Every spelling a LoRA may use for a module -> the module's weight name: diffusers' dotted names, kohya's with
    "_" for ".", the original SGM UNet names (kohya's SDXL files) and text-encoder names without ``text_model.``."""
    from .single_file import unet_original_names

    modules = {n[: -len(".weight")] for n in weights if n.endswith(".weight")}
    aliases = {m: m for m in modules}
    if component == "unet":
        original = unet_original_names(unet_config)
        aliases |= {original[m + ".weight"][: -len(".weight")]: m for m in modules if m + ".weight" in original}
    else:
        aliases |= {m.removeprefix("text_model."): m for m in modules}
    index = {alias.replace(".", "_"): m for alias, m in aliases.items()}
    return {**index, **aliases}


def _check_architecture(layers: dict, parts: PipelineParts, name: str) -> None:
    """Refuse an adapter made for another base model before its names are matched, saying which it is for."""
    model = NAMES[parts.architecture]
    if any(c == "text_encoder_2" for c, _ in layers) and "text_encoder_2" not in parts.weights:
        problem = f"{name} is an SDXL LoRA (it adapts a second text encoder) and the model is {model}"
        raise MixError(problem, f"use a LoRA made for {model}")
    configured = parts.configs["unet"].get("cross_attention_dim")
    allowed = set(configured) if isinstance(configured, (list, tuple)) else {configured}
    for (component, module), layer in layers.items():
        width = layer.down.shape[1] if layer.down.ndim == 2 else None
        if component == "unet" and CROSS_ATTENTION.search(module) and width is not None and width not in allowed:
            made_for = ARCHITECTURE_BY_WIDTH.get(width, f"a UNet whose text width is {width}")
            raise MixError(
                f"{name} is a LoRA for {made_for} and the model is {model} (text width {_names(sorted(map(str, allowed)))})",
                f"use a LoRA made for {model}",
            )


def _resolve(layers: dict, indexes: dict[str, dict], name: str) -> dict[tuple[str, str], LoraLayer]:
    """(component, weight name) -> layer; the layers that match nothing are refused, counted and named."""
    resolved, unmatched = {}, []
    for (component, module), layer in layers.items():
        target = indexes.get(component, {}).get(module)
        if target is None:
            unmatched.append(f"{component}.{module}")
        else:
            resolved[component, target + ".weight"] = layer
    if unmatched:
        raise MixError(
            f"{len(unmatched)} of {len(layers)} layers of {name} match no layer of the model ({_names(unmatched)})",
            "check that the LoRA is made for this model",
        )
    return resolved


# --- merging ---------------------------------------------------------------------------------------


def delta(layer: LoraLayer, shape: tuple[int, ...], paddle_layout: bool) -> np.ndarray | None:
    """up @ down in the target weight's shape (Linear (out, in), conv (out, in, kh, kw)); None where it does not fit."""
    up = layer.up.reshape(layer.up.shape[0], -1)  # (out, rank)
    if up.shape[1] != layer.rank:
        return None
    product = up @ layer.down.reshape(layer.rank, -1)  # (out, in * kh * kw)
    transposed = paddle_layout and len(shape) == 2  # Paddle keeps Linear weights as (in, out)
    if product.shape[0] != shape[1 if transposed else 0] or product.size != math.prod(shape):
        return None
    return np.ascontiguousarray(product.T) if transposed else product.reshape(shape)


def _deltas(resolved: dict, weights: dict[str, Mapping], weight: float, name: str) -> dict[tuple[str, str], np.ndarray]:
    out, misfits = {}, []
    for (component, target), layer in resolved.items():
        shape = tuple(weights[component][target].shape)
        paddle_layout = getattr(weights[component], "layout", "torch") == "paddle"
        update = delta(layer, shape, paddle_layout)
        if update is None:
            misfits.append(f"{component}.{target} (LoRA {layer.up.shape[0]}x{layer.down.shape[1:]}, model {list(shape)})")
            continue
        scale = weight * (layer.alpha if layer.alpha is not None else layer.rank) / layer.rank
        out[component, target] = np.float32(scale) * update
    if misfits:
        problem = f"{len(misfits)} layers of {name} do not fit the model's shapes: {_names(misfits, 2)}"
        raise MixError(problem, "check that the LoRA is made for this model")
    return out


def adapter_deltas(spec: LoraSpec, parts: PipelineParts, weights: dict[str, Mapping], allow_pickle: bool = False) -> dict:
    """(component, weight name) -> the scaled update one adapter adds."""
    name = adapter_file(spec.path).name
    layers = read_adapter(spec.path, allow_pickle)
    _check_architecture(layers, parts, name)
    indexes = {c: module_index(c, w, parts.configs["unet"]) for c, w in weights.items() if c == "unet" or c in TEXT_ENCODERS}
    return _deltas(_resolve(layers, indexes, name), weights, spec.weight, name)


def _merged(weights: Mapping, updates: dict[str, np.ndarray]) -> Mapping:
    if not updates:
        return weights
    tensors = dict(weights)
    for target, update in updates.items():
        base = tensors[target]
        tensors[target] = (base.numpy() if hasattr(base, "numpy") else np.asarray(base)).astype(np.float32) + update
    return weights.replace(tensors) if hasattr(weights, "replace") else tensors


def apply_loras(parts: PipelineParts, specs: list[LoraSpec], allow_pickle: bool = False) -> PipelineParts:
    """The parts with every adapter's update added to the weights it adapts (in float32, cast at load)."""
    from .clip import sanitize

    if not specs:
        return parts
    weights = {c: sanitize(w) if c in TEXT_ENCODERS else w for c, w in parts.weights.items()}
    totals: dict[tuple[str, str], np.ndarray] = {}
    for spec in specs:
        for key, update in adapter_deltas(spec, parts, weights, allow_pickle).items():
            totals[key] = totals[key] + update if key in totals else update
    merged = {c: _merged(w, {t: u for (cc, t), u in totals.items() if cc == c}) for c, w in weights.items()}
    return dataclasses.replace(parts, weights=merged, loras=(*parts.loras, *specs))
