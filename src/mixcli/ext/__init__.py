"""Compiled fused ops from the repo's ``ext/`` (C++ for CPU, CUDA for GPU) behind plain functions that
fall back to Paddle: RMSNorm, residual add + RMSNorm, LayerNorm, rotary embedding and its M-RoPE
tables, SwiGLU, QuickGELU (also with a bias), CPU attention and the weight-only int8 product. See ext/README.md for what each covers and what it gains."""

from .ops import (
    add_rms_norm,
    attention,
    attention_fits,
    bias_quick_gelu,
    enabled,
    failure,
    host_wint8_matmul,
    layer_norm,
    library,
    quick_gelu,
    reset,
    rms_norm,
    rotary,
    rotary_tables,
    swiglu,
    wint8_dequant,
    wint8_matmul,
)

__all__ = [
    "add_rms_norm",
    "attention",
    "attention_fits",
    "bias_quick_gelu",
    "enabled",
    "failure",
    "host_wint8_matmul",
    "layer_norm",
    "library",
    "quick_gelu",
    "reset",
    "rms_norm",
    "rotary",
    "rotary_tables",
    "swiglu",
    "wint8_dequant",
    "wint8_matmul",
]
