"""InternVL2 / InternVL2.5 (OpenGVLab's `internvl_chat` checkpoints): InternViT + MLP projector + Qwen2/InternLM2/Llama."""

from .model import InternVLChat, load

__all__ = ["InternVLChat", "load"]
