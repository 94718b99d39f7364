"""A loaded model made trainable: projections unfused, LoRA around the chosen linear layers of the
language model (or every parameter for --method full), the vision tower and projector frozen unless asked."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import paddle

from ..errors import MixError
from ..layers.lora import LoRALinear, linear_layers, replace_sublayer

LM_LAYERS = "language_model.model.layers."  # the decoder blocks, where "all-linear" looks


@dataclass(frozen=True)
class Method:
    """What to train: --method, the LoRA settings and which towers join in."""

    kind: str = "lora"  # "lora" | "full"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: str = "all-linear"
    train_vision: bool = False
    train_projector: bool = False


def language_linears(net) -> dict[str, paddle.nn.Linear]:
    """The language model's decoder linear layers by name (this module's names)."""
    return {name: layer for name, layer in linear_layers(net).items() if name.startswith(LM_LAYERS)}


def _matches(name: str, target: str) -> bool:
    """peft's rule: the whole name, or a dotted suffix of it (with * wildcards allowed)."""
    return fnmatch.fnmatchcase(name, target) or fnmatch.fnmatchcase(name, "*." + target)


def select_targets(linears: list[str], targets: str) -> list[str]:
    """The linear layers ``targets`` names ("all-linear", or comma-separated names or suffixes); an
    unknown name is one error listing the kinds of linear layer there are."""
    if targets.strip() == "all-linear":
        return list(linears)
    wanted = [t.strip() for t in targets.split(",") if t.strip()]
    unknown = [t for t in wanted if not any(_matches(n, t) for n in linears)]
    if unknown or not wanted:
        kinds = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise MixError(f"--lora-targets {','.join(unknown) or targets!r} names no linear layer of the language model",
                       f"use all-linear or some of: {', '.join(kinds)}")
    return [n for n in linears if any(_matches(n, t) for t in wanted)]


def add_lora(net, names: list[str], method: Method, seed: int) -> dict[str, LoRALinear]:
    """Wrap each named linear layer in LoRA; A drawn from a generator seeded by ``seed`` in name order,
    so every process (and a resumed run) starts from the same adapter."""
    rng = np.random.default_rng(seed)
    layers = linear_layers(net)
    wrapped = {}
    for name in names:
        lora = LoRALinear(layers[name], method.rank, method.alpha, method.dropout, rng)
        replace_sublayer(net, name, lora)
        wrapped[name] = lora
    return wrapped


def _in_part(name: str, model, method: Method) -> bool:
    """Whether a parameter belongs to a part --train-vision / --train-projector switched on."""
    projector = bool(model.projector_prefix) and name.startswith(model.projector_prefix)
    if projector:
        return method.train_projector
    if model.vision_prefix and name.startswith(model.vision_prefix):
        return method.train_vision
    return False


def trainable_names(model, method: Method) -> list[str]:
    """Parameters that learn: LoRA's A and B (or, for full, the language model's parameters), plus
    the vision tower and the projector when asked."""
    out = []
    for name, _ in model.net.named_parameters():
        lora = ".lora_A" in name or ".lora_B" in name
        language = name.startswith("language_model.") and ".base_layer." not in name
        if lora or (method.kind == "full" and language) or _in_part(name, model, method):
            out.append(name)
    return out


def prepare(model, method: Method, seed: int) -> tuple[list[str], dict[str, LoRALinear]]:
    """Make ``model`` (a loaded VisionLanguageModel) trainable in place; (trainable names, LoRA layers)."""
    net = model.net
    net.language_model.unfuse()
    lora = {}
    if method.kind == "lora":
        names = select_targets(list(language_linears(net)), method.targets)
        lora = add_lora(net, names, method, seed)
    names = trainable_names(model, method)
    params = dict(net.named_parameters())
    for name, param in params.items():
        param.stop_gradient = name not in names
    for layer in lora.values():
        layer.train()  # the rest stays in eval mode: the models have no dropout of their own
    return names, lora
