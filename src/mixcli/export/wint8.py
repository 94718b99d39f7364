"""`mix export --quantize wint8`: the language model's linear weights as per-output-channel int8.

Each quantised weight keeps its name and torch layout (out, in), now int8, with a float32 ``<name>_scale``
(out,) beside it in the same shard (``X.weight`` -> ``X.weight_scale``); w ~= weight * weight_scale[:, None].
config.json gains a ``quantization_config`` naming the method (``mix_wint8``). Everything else (vision tower,
projector, embeddings, norms, biases) is written as it was. mix reads the pairs back as float32 and quantises
them again to the same int8 values; transformers does not know the method and refuses the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..quant import QUANT_METHOD, quantize_rows
from ..weights import FLOATS, WINT8_SCALE, TensorRef


def quantization_config(count: int) -> dict:
    """config.json's quantization_config of a wint8 export."""
    return {"quant_method": QUANT_METHOD, "bits": 8, "weight_dtype": "int8", "scale_dtype": "float32",
            "granularity": "per_output_channel", "symmetric": True, "scale_suffix": WINT8_SCALE,
            "modules": "language model linear layers (decoder blocks and output projection)",
            "quantized_tensors": count}  # fmt: skip


class _Quantized:
    """One weight's int8 values and scales, computed once when the first of the two is written."""

    def __init__(self, ref: TensorRef):
        self.ref, self._pair = ref, None

    def pair(self):
        if self._pair is None:
            self._pair = quantize_rows(self.ref.numpy())
        return self._pair

    def refs(self) -> tuple[TensorRef, TensorRef]:
        shape = self.ref.shape
        return TensorRef(shape, "int8", lambda: self.pair()[0]), TensorRef(shape[:1], "float32", lambda: self.pair()[1])


def language_linears(tensors: dict[str, TensorRef], config: dict) -> list[str]:
    """The checkpoint names of the language model's 2-D float Linear weights (fused ones included)."""
    from ..adapters import adapter_names

    names = adapter_names(config)
    found = []
    for name, ref in tensors.items():
        canonical = names.canonical(name)
        if canonical and canonical.startswith("language_model.") and ref.dtype in FLOATS and len(ref.shape) == 2:
            if names.is_linear(canonical):
                found.append(name)
    return found


def quantize_tensors(tensors: dict[str, TensorRef], shards: dict[Path, list[str]], config: dict):
    """(tensors, shards) with the language model's Linear weights (torch layout) as int8 + scale pairs,
    each scale in its weight's shard; and how many were quantised."""
    targets = language_linears(tensors, config)
    out = dict(tensors)
    for name in targets:
        out[name], out[name + WINT8_SCALE] = _Quantized(tensors[name]).refs()
    chosen = set(targets)
    new_shards = {f: [m for n in names for m in ([n, n + WINT8_SCALE] if n in chosen else [n])] for f, names in shards.items()}
    return out, new_shards, len(targets)


def write_config(folder: Path, config: dict, count: int | None) -> None:
    """config.json over the copied one: with a wint8 quantization_config for ``count`` tensors, or (None)
    without one (a wint8 export written back as float)."""
    data = {k: v for k, v in config.items() if k != "quantization_config"}
    if count is not None:
        data["quantization_config"] = quantization_config(count)
    (folder / "config.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
