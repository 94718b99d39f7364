"""LoRA adapter names of LLaVA-NeXT: the LLaVA family's (models/llava/adapter_names.py)."""

from ..llava.adapter_names import Names

__all__ = ["Names"]
