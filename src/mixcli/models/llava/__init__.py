"""LLaVA-1.5, LLaVA-NeXT (1.6) and LLaVA-OneVision (and the checkpoints built on them: Aquila-VL, LLaVA-Critic)
in the llava-hf layout: a CLIP or SigLIP tower, a two-layer projector and a Llama, Mistral or Qwen2 decoder."""

from .model import Llava, load

__all__ = ["Llava", "load"]
