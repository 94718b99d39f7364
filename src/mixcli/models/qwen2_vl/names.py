"""Qwen2-VL's parameter names three ways: this module's, transformers 5's (what peft adapters are keyed
by) and the published checkpoints' (the authors' layout a fine-tuned checkpoint is written in)."""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

# mix -> transformers 5 (Qwen2VLForConditionalGeneration: model.language_model / model.visual / lm_head).
HF_RULES = [
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\b", "lm_head"),
    (r"^visual\b", "model.visual"),
]
# mix -> the published layout (model.* / visual.* / lm_head.*), the inverse of model.RENAMES.
AUTHORS_RULES = [
    (r"^language_model\.model\.", "model."),
    (r"^language_model\.lm_head\.", "lm_head."),
]


def _first(rules: list[tuple[str, str]], name: str) -> str:
    for pattern, replacement in rules:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name, count=1)
    return name


def hf_name(name: str) -> str:
    """A parameter or layer name of mix's Qwen2-VL as transformers 5 names it."""
    return _first(HF_RULES, name)


def hf_tensors(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tensors (torch layout) under transformers 5's names."""
    return {hf_name(name): value for name, value in tensors.items()}


def authors_tensors(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tensors (torch layout) under the published checkpoints' names."""
    return {_first(AUTHORS_RULES, name): value for name, value in tensors.items()}
