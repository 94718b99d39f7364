"""SiglipConfig as transformers reads config.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ...configs import Config
from ..clip.config import sub_config


@dataclass
class SiglipTextConfig(Config):
    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 64
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    projection_size: int | None = None  # None: hidden_size

    def __post_init__(self):
        self.projection_size = self.projection_size or self.hidden_size


@dataclass
class SiglipVisionConfig(Config):
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 16
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    vision_use_head: bool = True


@dataclass
class SiglipConfig(Config):
    text: SiglipTextConfig = field(default_factory=SiglipTextConfig)
    vision: SiglipVisionConfig = field(default_factory=SiglipVisionConfig)

    @classmethod
    def from_dict(cls, data: Mapping, **overrides) -> "SiglipConfig":
        return cls(SiglipTextConfig.from_dict(sub_config(data, "text")),
                   SiglipVisionConfig.from_dict(sub_config(data, "vision")), **overrides)  # fmt: skip
