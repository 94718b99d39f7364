"""EVA-CLIP (EVA02-CLIP as open_clip and timm publish it: open_clip_config.json + open_clip_model.safetensors) in
Paddle: timm's EVA02 vision tower (2D rotary positions, SwiGLU with sub-LayerNorm) and OpenAI CLIP's text tower."""

TASK = "contrastive"

from .model import load  # noqa: E402

__all__ = ["TASK", "load"]
