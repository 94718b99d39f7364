"""LLaVA-NeXT (llava-hf's `llava_next`): the LLaVA family with anyres tiling; the code lives in models/llava."""

from ..llava import Llava, load

__all__ = ["Llava", "load"]
