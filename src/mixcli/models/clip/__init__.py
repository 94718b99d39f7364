"""CLIP (OpenAI's checkpoints in transformers' CLIPModel layout) in Paddle; the contrastive families share its
vision tower, image processor and model record (models/clip/model.ContrastiveModel)."""

TASK = "contrastive"  # what `mix infer --labels` and `mix embed` run, not the VLM decode loop

from .model import load  # noqa: E402

__all__ = ["TASK", "load"]
