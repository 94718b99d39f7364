"""CLIPConfig as transformers reads config.json: a text and a vision sub-config plus the projection width."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ...configs import Config
from ...diffusion.clip import CLIPTextConfig


def sub_config(data: Mapping, name: str) -> dict:
    """``text_config`` / ``vision_config``; an old file's ``*_config_dict`` wins whole, as transformers'
    CLIPConfig.__post_init__ rebuilds the sub-config from it and the class defaults. Nulls mean the default."""
    chosen = data.get(f"{name}_config_dict")
    if chosen is None:
        chosen = data.get(f"{name}_config") or {}
    return {k: v for k, v in chosen.items() if v is not None}


@dataclass
class CLIPVisionConfig(Config):
    """transformers' CLIPVisionConfig fields (also Chinese-CLIP's vision tower)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


@dataclass
class CLIPConfig(Config):
    """config.json of a CLIPModel checkpoint."""

    text: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    vision: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    projection_dim: int = 512

    @classmethod
    def from_dict(cls, data: Mapping, **overrides) -> "CLIPConfig":
        text = CLIPTextConfig.from_dict(sub_config(data, "text"))
        vision = CLIPVisionConfig.from_dict(sub_config(data, "vision"))
        return cls(text, vision, int(data.get("projection_dim") or 512), **overrides)
