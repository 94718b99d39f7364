"""SigLIP (google/siglip-* in transformers' SiglipModel layout) in Paddle, on CLIP's shared pieces."""

TASK = "contrastive"

from .model import load  # noqa: E402

__all__ = ["TASK", "load"]
