"""Weight-only quantisation of a vision-language model's language model (``--quantize wint8``): every
linear layer of the decoder blocks and the output projection (tied to the embeddings or not) becomes a
``layers.quant.Wint8Linear``; the vision tower, the projector and the embedding lookup stay float.

The same per-channel int8 values are what ``mix export --quantize wint8`` writes (``export/wint8.py``),
so a model exported that way and one quantised at load decode alike.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError, MixError

METHODS = ("wint8",)
# config.json's quantization_config of a wint8 export (see export/wint8.py and the README).
QUANT_METHOD = "mix_wint8"
_CHUNK = 1 << 22  # values quantised at a time: bounds the float32 temporaries of a large table


def quantize_rows(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights and float32 scales of a float (out, in) matrix, one scale per output row (PaddleMIX's
    weight_only_int8): scale = max|row| / 127, q = round(row / scale); an all-zero row gets scale 1."""
    q = np.empty(weight.shape, np.int8)
    scale = np.empty(weight.shape[0], np.float32)
    step = max(1, _CHUNK // max(1, weight.shape[1]))
    for lo in range(0, weight.shape[0], step):
        rows = np.asarray(weight[lo : lo + step], dtype=np.float32)
        absmax = np.abs(rows).max(axis=1)
        s = np.where(absmax > 0, absmax / np.float32(127), np.float32(1)).astype(np.float32)
        q[lo : lo + step] = np.clip(np.rint(rows / s[:, None]), -127, 127)
        scale[lo : lo + step] = s
    return q, scale


def dequantize_rows(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float32 (out, in) matrix of int8 rows and their scales."""
    return q.astype(np.float32) * scale[:, None]


def check_method(method: str | None) -> str | None:
    """The method, or an error naming the supported ones."""
    if method is not None and method not in METHODS:
        raise InputError(f"unknown quantisation {method!r}", f"use one of: {', '.join(METHODS)}")
    return method


def checkpoint_method(config: dict) -> str | None:
    """'wint8' when config.json says the checkpoint is a wint8 export, else None."""
    quant = config.get("quantization_config") or {}
    return "wint8" if isinstance(quant, dict) and quant.get("quant_method") == QUANT_METHOD else None


def quantize_language_model(lm) -> int:
    """Replace the linear layers of a ``layers.decoder.CausalLM`` (blocks and output projection) by
    Wint8Linear, in place; returns how many. The float weights they held are released."""
    from .layers.linear import RowFastPath
    from .layers.lora import replace_sublayer
    from .layers.quant import Wint8Linear

    count = 0
    for layer in lm.model.layers:
        linears = [(name, sub) for name, sub in layer.named_sublayers() if isinstance(sub, RowFastPath)]
        for name, sub in linears:
            replace_sublayer(layer, name, Wint8Linear.from_linear(sub))
            count += 1
    if lm.config.tie_word_embeddings:  # the table is (vocab, hidden): already one output channel a row
        lm.tied_head = Wint8Linear.from_rows(lm.model.embed_tokens.weight.detach().astype("float32").numpy())
    else:
        lm.lm_head = Wint8Linear.from_linear(lm.lm_head)
    lm._fast = None  # the NumPy decode path takes its views again
    return count + 1


def quantize_model(model, method: str) -> None:
    """Quantise a loaded VisionLanguageModel's language model with ``method`` (one of METHODS)."""
    check_method(method)
    lm = getattr(model, "language_model", None)
    if lm is None or not hasattr(lm, "model"):
        raise MixError(f"a {getattr(model, 'family', type(model).__name__)} model has no language model to quantise",
                       "drop --quantize")  # fmt: skip
    quantize_language_model(lm)
    model.quantized = method
