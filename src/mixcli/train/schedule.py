"""Learning-rate schedules with linear warm-up, as transformers' get_*_schedule_with_warmup compute them."""

from __future__ import annotations

import math

from ..errors import MixError

SCHEDULES = ("cosine", "linear", "constant")


def warmup_steps(total: int, ratio: float) -> int:
    """transformers' TrainingArguments.get_warmup_steps: ceil(total x ratio)."""
    return math.ceil(total * ratio)


def lr_factor(kind: str, step: int, total: int, warmup: int) -> float:
    """The multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if kind not in SCHEDULES:
        raise MixError(f"unknown --lr-scheduler '{kind}'", f"use one of {', '.join(SCHEDULES)}")
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
