"""Chinese-CLIP (OFA-Sys/chinese-clip-* in transformers' ChineseCLIPModel layout) in Paddle."""

TASK = "contrastive"

from .model import load  # noqa: E402

__all__ = ["TASK", "load"]
