"""Finding and building the parts of a Stable Diffusion pipeline: diffusers folders (with fp16
variants) and single-file checkpoints, resolved to the same components."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import CheckpointError, MixError

# model_index.json classes we run, and the architecture each stands for.
PIPELINES = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionImg2ImgPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
}
COMPONENTS = {
    "sd15": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
}
WEIGHT_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model"}  # text encoders: "model"
# The registry alias whose folder supplies configs and tokenizers for a single-file checkpoint.
BASE_MODELS = {"sd15": "stable-diffusion-v1-5", "sdxl": "sdxl-base-1.0"}


@dataclass
class PipelineParts:
    """Everything a pipeline is built from, before any Paddle layer exists."""

    architecture: str  # "sd15" or "sdxl"
    configs: dict[str, dict]  # component -> its config.json (scheduler: scheduler_config.json)
    weights: dict[str, Mapping[str, Any]]  # component -> diffusers-named tensors
    tokenizer_dirs: dict[str, Path]  # "tokenizer" / "tokenizer_2" -> folder
    pipeline_config: dict  # model_index.json (force_zeros_for_empty_prompt, ...)
    loras: tuple = ()  # the LoRA adapters (lora.LoraSpec) merged into ``weights``


def read_json(path: Path) -> dict:
    """A JSON file of a checkpoint, with a clear error when it is missing or broken."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing", "download the model again: mix download MODEL") from None
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})", "download the model again: mix download MODEL") from e


def folder_architecture(folder: Path) -> tuple[str, dict]:
    """The architecture of a diffusers folder, from its model_index.json."""
    index = read_json(folder / "model_index.json")
    cls = index.get("_class_name", "")
    if cls not in PIPELINES:
        known = ", ".join(sorted(PIPELINES))
        raise CheckpointError(f"{folder} holds a {cls or 'unknown'} pipeline, which mix cannot run", f"supported: {known}")
    return PIPELINES[cls], index


def _check_components(folder: Path, architecture: str) -> None:
    for part in COMPONENTS[architecture]:
        if not (folder / part).is_dir():
            raise CheckpointError(f"{folder} has no {part}/ folder", "download the whole model again: mix download MODEL")


def variant_weights(folder: Path, stem: str, variant: str | None, allow_pickle: bool = False):
    """A component's weights: the ``variant`` file (``model.fp16.safetensors``) when asked for,
    else the plain file, else the only variant present (diffusers' ``variant=`` naming)."""
    from ..weights import open_checkpoint

    if variant:
        for name in (f"{stem}.{variant}.safetensors", f"{stem}.safetensors.index.{variant}.json"):
            if (folder / name).is_file():
                return open_checkpoint(folder / name)
        raise CheckpointError(f"{folder} has no {variant} weights ({stem}.{variant}.safetensors)", "leave out --variant")
    return open_checkpoint(folder, allow_pickle=allow_pickle)


def folder_parts(folder: Path, variant: str | None = None, allow_pickle: bool = False) -> PipelineParts:
    """The parts of a pipeline saved in the diffusers layout."""
    architecture, index = folder_architecture(folder)
    _check_components(folder, architecture)
    models = [c for c in COMPONENTS[architecture] if not c.startswith(("tokenizer", "scheduler"))]
    configs = {c: read_json(folder / c / "config.json") for c in models}
    configs["scheduler"] = read_json(folder / "scheduler" / "scheduler_config.json")
    weights = {c: variant_weights(folder / c, WEIGHT_STEMS.get(c, "model"), variant, allow_pickle) for c in models}
    tokenizers = {c: folder / c for c in COMPONENTS[architecture] if c.startswith("tokenizer")}
    return PipelineParts(architecture, configs, weights, tokenizers, index)


def single_file_parts(path: Path, config_dir: Path | None = None) -> PipelineParts:
    """The parts of a single-file checkpoint: weights from the file, configs and tokenizers from
    ``config_dir`` (a diffusers folder of the same architecture) or the downloaded base model."""
    from ..weights import open_checkpoint
    from .single_file import detect_architecture, split_single_file

    checkpoint = open_checkpoint(path)
    architecture = detect_architecture(checkpoint.keys())
    base = config_dir if config_dir is not None else _base_model_dir(architecture)
    found, index = folder_architecture(base)
    if found != architecture:
        raise MixError(f"{path.name} is an {architecture} checkpoint but {base} holds {found}", "pass a matching --config folder")
    _check_components(base, architecture)
    texts = [c for c in COMPONENTS[architecture] if c.startswith("text_encoder")]
    configs = {c: read_json(base / c / "config.json") for c in ("unet", "vae", *texts)}
    configs["scheduler"] = read_json(base / "scheduler" / "scheduler_config.json")
    weights = split_single_file(checkpoint, architecture, configs["unet"], configs["vae"], {c: configs[c] for c in texts})
    tokenizers = {c: base / c for c in COMPONENTS[architecture] if c.startswith("tokenizer")}
    return PipelineParts(architecture, configs, weights, tokenizers, index)


def _base_model_dir(architecture: str) -> Path:
    from ..hub import local_model_dir

    alias = BASE_MODELS[architecture]
    folder = local_model_dir(alias)
    if folder is None:
        raise MixError(
            f"a single-file {architecture} checkpoint needs the configs and tokenizers of {alias}",
            f"run `mix download {alias} --include '*.json' --include '*.txt'`, or pass --config DIR",
        )
    return folder
