"""LoRA adapters in PEFT's layout (adapter_config.json + adapter_model.safetensors), merged into a
checkpoint's own tensors: W += scale * B @ A, scale = lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA).

The merge works on the checkpoint under its authors' names, so `mix infer --adapter` (which renames
the merged tensors like any checkpoint) and `mix export` (which writes them) share it. Each family
maps adapter names to checkpoint names in ``models/<family>/adapter_names.py`` (a ``Names`` subclass
of ``AdapterNames``); every adapter tensor must land somewhere, unlike peft, which skips unknown keys.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import CheckpointError, InputError, MixError
from .weights import FLOATS, Checkpoint, Rule, TensorRef, float32_to_bf16, read_safetensors, read_torch_pickle, rename

PEFT_PREFIX = "base_model.model."
# adapter_config.json switches for LoRA variants whose merge is not W + scale * B @ A.
VARIANTS = {
    "use_dora": "DoRA (use_dora)",
    "use_qalora": "QA-LoRA (use_qalora)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "layer_replication": "layer replication (layer_replication)",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "use_bdlora": "BD-LoRA (use_bdlora)",
}
# What a LoRA tensor's name ends with: (suffix, role).
LORA_PARTS = (
    (".lora_A.weight", "A"), (".lora_B.weight", "B"), (".lora_B.bias", "bias"),
    (".lora_embedding_A", "A"), (".lora_embedding_B", "B"),
)  # fmt: skip


@dataclass
class LoraConfig:
    """The fields of PEFT's LoraConfig that decide the merge, under peft's names."""

    r: int = 8
    lora_alpha: float = 8
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    modules_to_save: list[str] | None = None
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    bias: str = "none"
    base_model_class: str | None = None  # auto_mapping.base_model_class: the transformers class it was trained on

    @classmethod
    def from_dict(cls, data: dict, where: Path) -> "LoraConfig":
        """The config of adapter_config.json; an error naming what mix cannot merge."""
        kind = data.get("peft_type", "LORA")
        if kind != "LORA":
            raise MixError(f"{where} is a {kind} adapter; mix applies LoRA adapters only", "train a LoRA adapter")
        for key, name in VARIANTS.items():
            if data.get(key):
                raise MixError(f"{where} is a {name} adapter, which mix cannot merge", "use a plain LoRA adapter")
        fields = {k: data[k] for k in cls.__dataclass_fields__ if data.get(k) is not None}
        base = (data.get("auto_mapping") or {}).get("base_model_class")
        return cls(**fields, base_model_class=base)

    def scale(self, module: str, rank: int) -> float:
        """lora_alpha / r for one module, its alpha from alpha_pattern (peft's get_pattern_key)."""
        alpha = self.alpha_pattern.get(pattern_key(self.alpha_pattern, module), self.lora_alpha)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank

    def rank(self, module: str) -> int:
        return self.rank_pattern.get(pattern_key(self.rank_pattern, module), self.r)

    def targets(self, module: str) -> bool:
        """Whether peft would put a LoRA layer on ``module`` (peft's check_target_module_exists)."""
        if _listed(self.exclude_modules, module):
            return False
        if self.target_modules in ("all-linear", None):
            return True
        return _listed(self.target_modules, module)

    def saves(self, name: str) -> bool:
        """Whether a tensor belongs to one of modules_to_save (trained in full and stored whole), as
        peft matches them: the module's name is a dotted part of the tensor's."""
        return any(re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", name) for m in self.modules_to_save or ())


def pattern_key(patterns: Mapping[str, object], module: str) -> str:
    """The rank_pattern / alpha_pattern key that names ``module`` (peft.utils.other.get_pattern_key)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return module


def _listed(names: list[str] | str | None, module: str) -> bool:
    """peft's target/exclude rule: a string is a regex matched in full, a list names module suffixes."""
    if not names:
        return False
    if isinstance(names, str):
        return re.fullmatch(names, module) is not None
    return any(module == n or module.endswith("." + n) for n in names)


@dataclass
class Adapter:
    """An adapter folder: its config and tensors (peft's names, without the base_model.model. prefix)."""

    path: Path
    config: LoraConfig
    tensors: dict[str, TensorRef]


def read_adapter(path: str | Path, allow_pickle: bool = False) -> Adapter:
    """The adapter in ``path``: adapter_config.json and adapter_model.safetensors (or .bin with allow_pickle)."""
    path = Path(path)
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise InputError(f"{path} has no adapter_config.json", "point --adapter at the folder peft or mix finetune wrote")
    try:
        config = LoraConfig.from_dict(json.loads(config_file.read_text(encoding="utf-8")), path)
    except (ValueError, TypeError) as e:
        raise InputError(f"{config_file} is not a valid adapter config ({e})", "re-save the adapter") from e
    tensors = {name.removeprefix(PEFT_PREFIX): ref for name, ref in _adapter_tensors(path, allow_pickle).items()}
    return Adapter(path, config, tensors)


def _adapter_tensors(path: Path, allow_pickle: bool) -> dict[str, TensorRef]:
    if (path / "adapter_model.safetensors").is_file():
        return read_safetensors(path / "adapter_model.safetensors")
    if not (path / "adapter_model.bin").is_file():
        raise InputError(f"{path} has no adapter_model.safetensors", "point --adapter at a complete adapter folder")
    if not allow_pickle:
        raise CheckpointError(
            "adapter_model.bin is a pickle file, which can run code when loaded",
            "pass --allow-pickle (or set MIX_ALLOW_PICKLE=1) if you trust its source",
        )
    return read_torch_pickle(path / "adapter_model.bin")


# --- the family's names ---------------------------------------------------------------------


class AdapterNames:
    """How a family's adapter names map onto its checkpoint: ``rules`` rename any name it may come
    under (the transformers model's, the checkpoint's own) to one canonical name; ``fused_parts``
    names the row blocks of a fused checkpoint tensor that other layouts keep apart."""

    def __init__(self, config: dict):
        self.config = config

    def rules(self) -> list[Rule]:
        """Rename rules to the canonical names (weights.rename semantics); a name no rule changes is canonical."""
        return []

    def fused_parts(self, canonical: str) -> dict[str, np.ndarray]:
        """The canonical names of the parts of a fused tensor, with the (output) rows each takes; {} if not fused."""
        return {}

    def base_classes(self) -> set[str]:
        """The transformers classes (peft's auto_mapping.base_model_class) an adapter for this model names."""
        return set(self.config.get("architectures") or [])

    def network(self):
        """The family's network built under paddle.LazyGuard (no memory), whose names are the canonical ones."""
        raise NotImplementedError

    def canonical(self, name: str) -> str:
        return next(iter(rename({name: None}, self.rules())))

    def is_linear(self, canonical: str) -> bool:
        """Whether a tensor is a Linear weight (or fuses some), which a Paddle-layout checkpoint stores (in, out)."""
        if not hasattr(self, "_linear"):
            from .weights import linear_weight_names

            self._linear = linear_weight_names(self.network())
        return canonical in self._linear or any(part in self._linear for part in self.fused_parts(canonical))


def adapter_names(config: dict) -> AdapterNames:
    """The family's AdapterNames for a config.json; an error when the family takes no adapters."""
    from .models import family_module

    family = family_module(config.get("model_type", ""))
    try:
        module = import_module(f"{family.__name__}.adapter_names")
    except ModuleNotFoundError as e:
        raise MixError(f"'{config.get('model_type')}' models take no adapters yet", "drop --adapter") from e
    return module.Names(config)


# --- where each adapter tensor goes ---------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A checkpoint tensor, and the rows of it (None: all) a canonical name stands for."""

    name: str
    rows: np.ndarray | None = None


def target_index(checkpoint: Mapping[str, TensorRef], names: AdapterNames) -> dict[str, Target]:
    """Canonical name -> the checkpoint tensor (and rows) it stands for, fused parts included."""
    index: dict[str, Target] = {}
    for name in checkpoint:
        canonical = names.canonical(name)
        index[canonical] = Target(name)
        for part, rows in names.fused_parts(canonical).items():
            index[part] = Target(name, rows)
    return index


@dataclass
class Edit:
    """What the adapter does to one checkpoint tensor: replacements of (rows of) it, then deltas on rows of it."""

    replace: list[tuple[np.ndarray | None, TensorRef]] = field(default_factory=list)
    deltas: list[tuple[np.ndarray | None, "LoraPair", bool]] = field(default_factory=list)  # (rows, pair, on bias)


@dataclass
class LoraPair:
    """One module's A and B (and lora_bias), with its scale."""

    module: str
    keys: list[str] = field(default_factory=list)  # its tensors' names in the adapter
    A: TensorRef | None = None
    B: TensorRef | None = None
    bias: TensorRef | None = None
    scale: float = 1.0
    embedding: bool = False  # lora_embedding_A/B: A is (r, vocab), B (dim, r); delta = (B @ A).T

    def delta(self, fan_in_fan_out: bool) -> np.ndarray:
        """scale * B @ A in the base weight's torch layout (out, in), as peft's get_delta_weight."""
        d = self.B.numpy().astype(np.float32) @ self.A.numpy().astype(np.float32)
        return (d.T if self.embedding or fan_in_fan_out else d) * np.float32(self.scale)

    def delta_shape(self, fan_in_fan_out: bool) -> tuple[int, int]:
        shape = (self.B.shape[0], self.A.shape[1])
        return shape[::-1] if self.embedding or fan_in_fan_out else shape


def _split_keys(adapter: Adapter) -> tuple[dict[str, LoraPair], dict[str, TensorRef]]:
    """The adapter's LoRA pairs by module, and its other tensors (whole replacements) by name."""
    pairs: dict[str, LoraPair] = {}
    whole: dict[str, TensorRef] = {}
    for key, ref in adapter.tensors.items():
        part = next(((key[: -len(s)], role, "embedding" in s) for s, role in LORA_PARTS if key.endswith(s)), None)
        if part is None:
            whole[key] = ref
            continue
        module, role, embedding = part
        pair = pairs.setdefault(module, LoraPair(module, embedding=embedding))
        setattr(pair, role, ref)
        pair.keys.append(key)
    return pairs, whole


def _structure_errors(pairs: dict[str, LoraPair]) -> list[str]:
    """Pairs that miss a half, or are not the 2-D LoRA of a linear or embedding layer."""
    errors = []
    for module, pair in pairs.items():
        if pair.A is None or pair.B is None:
            errors.append(f"{module} has lora_{'B' if pair.A is not None else 'A'} without its partner")
        elif len(pair.A.shape) != 2 or len(pair.B.shape) != 2:
            errors.append(f"{module} is a {len(pair.A.shape)}-D (convolution) LoRA, which mix cannot merge")
    return errors


def _config_errors(pairs: dict[str, LoraPair], config: LoraConfig) -> list[str]:
    """Ranks that disagree with the config, modules outside target_modules; sets each pair's scale."""
    errors = []
    for module, pair in pairs.items():
        if pair.A.shape[0] != config.rank(module) or pair.B.shape[1] != pair.A.shape[0]:
            errors.append(f"{module} has rank {pair.A.shape[0]}, adapter_config.json says {config.rank(module)}")
        elif not config.targets(module):
            errors.append(f"{module} is not among target_modules")
        else:
            pair.scale = config.scale(module, pair.A.shape[0])
    return errors


def _refuse(errors: list[str], adapter: "Adapter") -> None:
    if errors:
        raise MixError(
            f"the adapter {adapter.path} cannot be merged ({len(errors)} problems): {_names(errors)}",
            "re-save the adapter with peft, or fix its adapter_config.json",
        )


def _names(items: list[str], limit: int = 3) -> str:
    more = f", … {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _check_base_class(adapter: Adapter, names: AdapterNames) -> None:
    base, accepted = adapter.config.base_model_class, names.base_classes()
    if base and accepted and base not in accepted:
        this = sorted(accepted)[0]
        raise MixError(
            f"the adapter {adapter.path} was trained on a {base}, this model is a {this}",
            "pass the model the adapter was trained on",
        )


class MergePlan:
    """The edits an adapter makes, built from names and shapes alone (no tensor data read)."""

    def __init__(self, checkpoint: Checkpoint, adapter: Adapter, names: AdapterNames):
        self.checkpoint, self.adapter, self.names = checkpoint, adapter, names
        self.index = target_index(checkpoint, names)
        self.edits: dict[str, Edit] = {}
        self.unmatched: list[str] = []
        self.bad_shapes: list[str] = []

    def locate(self, name: str, keys: list[str]) -> Target | None:
        """Where a tensor goes; None (and its adapter keys noted) if nowhere."""
        target = self.index.get(self.names.canonical(name))
        if target is None:
            self.unmatched.extend(keys)
        return target

    def target_shape(self, target: Target) -> tuple[int, ...]:
        """The tensor's shape in torch layout ((out, in) for a Linear weight), rows selected."""
        shape = self.checkpoint[target.name].shape
        if self.transposed(target.name):
            shape = shape[::-1]
        return shape if target.rows is None else (len(target.rows), *shape[1:])

    def transposed(self, name: str) -> bool:
        """Whether the checkpoint stores this Linear weight (in, out), as Paddle does."""
        return self.checkpoint.layout == "paddle" and self.names.is_linear(self.names.canonical(name))

    def add_pair(self, pair: LoraPair) -> None:
        fan = self.adapter.config.fan_in_fan_out
        target = self.locate(pair.module + ".weight", pair.keys)
        if target is None:
            return
        if self.target_shape(target) != pair.delta_shape(fan):
            shape = list(self.target_shape(target))
            self.bad_shapes.append(f"{pair.module} (adapter {list(pair.delta_shape(fan))}, model {shape})")
            return
        self.edits.setdefault(target.name, Edit()).deltas.append((target.rows, pair, False))
        if pair.bias is not None:
            self.add_bias(pair)

    def add_bias(self, pair: LoraPair) -> None:
        target = self.locate(pair.module + ".bias", [])
        if target is not None and self.target_shape(target) == tuple(pair.bias.shape):
            self.edits.setdefault(target.name, Edit()).deltas.append((target.rows, pair, True))
        elif target is not None:
            self.bad_shapes.append(f"{pair.module}.bias (adapter {list(pair.bias.shape)})")

    def add_whole(self, key: str, ref: TensorRef) -> None:
        """A tensor stored in full: of modules_to_save, a bias trained with bias="all"/"lora_only", or a
        targeted embedding's base weight (peft's save_embedding_layers, in case the vocabulary grew)."""
        config = self.adapter.config
        name = key.replace(".base_layer.", ".")
        allowed = config.saves(name) or ".base_layer." in key or (config.bias != "none" and name.endswith(".bias"))
        target = self.locate(name, [key]) if allowed else None
        if not allowed:
            self.unmatched.append(key)
        elif target is not None and self.target_shape(target) == tuple(ref.shape):
            self.edits.setdefault(target.name, Edit()).replace.append((target.rows, ref))
        elif target is not None:
            self.bad_shapes.append(f"{name} (adapter {list(ref.shape)}, model {list(self.target_shape(target))})")

    def check_names(self) -> None:
        """One error if any adapter tensor has no place in the checkpoint."""
        n, where = len(self.adapter.tensors), self.adapter.path
        if self.unmatched and len(self.unmatched) == n:
            raise MixError(
                f"none of the {n} tensors of the adapter {where} names a layer of this model ({_names(self.unmatched)})",
                "the adapter is for another model; pass the model it was trained on",
            )
        if self.unmatched:
            raise MixError(
                f"{len(self.unmatched)} of the {n} tensors of the adapter {where} match no layer of this model: "
                f"{_names(self.unmatched)}",
                "check that the adapter was trained on this model; mix applies every tensor or none",
            )

    def check_shapes(self) -> None:
        if self.bad_shapes:
            raise MixError(
                f"the adapter {self.adapter.path} does not fit this model: {len(self.bad_shapes)} tensors have "
                f"other shapes ({_names(self.bad_shapes)})",
                "pass the model the adapter was trained on",
            )


def plan_merge(checkpoint: Checkpoint, adapter: Adapter, names: AdapterNames) -> MergePlan:
    """Every edit the adapter makes, by checkpoint name; one clear error if any tensor has no place."""
    _check_base_class(adapter, names)
    pairs, whole = _split_keys(adapter)
    _refuse(_structure_errors(pairs), adapter)
    plan = MergePlan(checkpoint, adapter, names)
    for pair in pairs.values():
        plan.add_pair(pair)
    for name, ref in whole.items():
        plan.add_whole(name, ref)
    plan.check_names()
    _refuse(_config_errors(pairs, adapter.config), adapter)
    plan.check_shapes()
    return plan


def merge_adapter(checkpoint: Checkpoint, adapter: Adapter, config: dict) -> Checkpoint:
    """The checkpoint with the adapter merged, under the checkpoint's names, layout and dtypes (as
    peft's merge_and_unload keeps the base dtype); a merged tensor is computed when it is read."""
    plan = plan_merge(checkpoint, adapter, adapter_names(config))
    fan = adapter.config.fan_in_fan_out
    tensors = dict(checkpoint.items())
    for name, edit in plan.edits.items():
        ref = checkpoint[name]
        read = lambda ref=ref, edit=edit, flip=plan.transposed(name): _merged(ref, edit, flip, fan)
        tensors[name] = TensorRef(ref.shape, ref.dtype, read)
    return checkpoint.replace(tensors)


def _merged(ref: TensorRef, edit: Edit, transposed: bool, fan_in_fan_out: bool) -> np.ndarray:
    """The edited tensor's values in the checkpoint's storage (bfloat16 as bits, Paddle's (in, out))."""
    if ref.dtype not in FLOATS:
        raise CheckpointError(f"cannot merge a LoRA into a {ref.dtype} tensor", "merge into a floating-point checkpoint")
    values = np.array(ref.numpy().T if transposed else ref.numpy(), dtype=np.float32)  # torch layout, a copy
    for rows, replacement in edit.replace:  # peft stores them in torch layout
        values[slice(None) if rows is None else rows] = replacement.numpy()
    for rows, pair, on_bias in edit.deltas:
        delta = pair.bias.numpy().astype(np.float32) * np.float32(pair.scale) if on_bias else pair.delta(fan_in_fan_out)
        if rows is None:
            values += delta
        else:
            values[rows] += delta
    return _storage(np.ascontiguousarray(values.T if transposed else values), ref.dtype)


def _storage(values: np.ndarray, dtype: str) -> np.ndarray:
    return float32_to_bf16(values) if dtype == "bfloat16" else values.astype(dtype)
