"""Qwen2-VL, Qwen2.5-VL and PP-DocBee (Qwen2-VL architecture) in Paddle."""

from .model import load

__all__ = ["load"]
