"""LLaVA-OneVision (llava-hf's `llava_onevision`, also Aquila-VL-2B and LLaVA-Critic): the LLaVA family with a
SigLIP tower and anyres_max tiling; the code lives in models/llava."""

from ..llava import Llava, load

__all__ = ["Llava", "load"]
