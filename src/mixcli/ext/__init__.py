"""Compiled fused ops from the repo's ``ext/`` (C++ for CPU, CUDA for GPU) behind plain functions that
fall back to Paddle: RMSNorm, residual add + RMSNorm, LayerNorm, rotary embedding and its M-RoPE
tables, SwiGLU and QuickGELU. See ext/README.md for what each covers and what it gains."""

from .ops import (
    add_rms_norm,
    enabled,
    failure,
    layer_norm,
    library,
    quick_gelu,
    reset,
    rms_norm,
    rotary,
    rotary_tables,
    swiglu,
)

__all__ = [
    "add_rms_norm",
    "enabled",
    "failure",
    "layer_norm",
    "library",
    "quick_gelu",
    "reset",
    "rms_norm",
    "rotary",
    "rotary_tables",
    "swiglu",
]
