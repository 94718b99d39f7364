"""open_clip_config.json of an EVA02-CLIP checkpoint. Its vision tower is named, not described (a timm model
name), so the published towers' shapes are listed here as timm's eva.py defines them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ...configs import Config
from ...errors import CheckpointError


@dataclass(frozen=True)
class EvaVisionConfig:
    """A timm ``eva02_*_clip_*`` tower: class token pooling, q/v bias without k bias, sub-LN in attention and
    SwiGLU, rotary positions on a grid rescaled to ``ref_grid`` (timm's ref_feat_shape)."""

    width: int
    layers: int
    heads: int
    patch_size: int
    image_size: int
    mlp_ratio: float = 4 * 2 / 3
    ref_grid: int = 16
    eps: float = 1e-6  # timm's LayerNorm default
    rope_theta: float = 10000.0

    @property
    def mlp_dim(self) -> int:
        return int(self.width * self.mlp_ratio)  # timm's int(dim * mlp_ratio)


# timm/models/eva.py: eva02_base_patch16_clip_224, eva02_large_patch14_clip_224 / _336.
TIMM_TOWERS: dict[str, EvaVisionConfig] = {
    "eva02_base_patch16_clip_224": EvaVisionConfig(768, 12, 12, 16, 224),
    "eva02_large_patch14_clip_224": EvaVisionConfig(1024, 24, 16, 14, 224),
    "eva02_large_patch14_clip_336": EvaVisionConfig(1024, 24, 16, 14, 336),
}


@dataclass
class OpenCLIPTextConfig(Config):
    """open_clip's CLIPTextCfg fields that EVA02-CLIP's configs set (the rest at open_clip's defaults)."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0


@dataclass
class EvaCLIPConfig:
    embed_dim: int
    vision: EvaVisionConfig
    text: OpenCLIPTextConfig = field(default_factory=OpenCLIPTextConfig)

    @classmethod
    def from_dict(cls, data: Mapping) -> "EvaCLIPConfig":
        """The parsed open_clip_config.json ({"model_cfg": ..., "preprocess_cfg": ...})."""
        model = data.get("model_cfg") or {}
        vision = model.get("vision_cfg") or {}
        check_tower(vision)
        return cls(int(model.get("embed_dim") or 512), TIMM_TOWERS[vision["timm_model_name"]],
                   OpenCLIPTextConfig.from_dict(model.get("text_cfg") or {}))  # fmt: skip


def check_tower(vision: Mapping) -> None:
    """The vision tower is a known EVA02 one, pooled at the class token and projected by timm's head."""
    name = vision.get("timm_model_name")
    if name not in TIMM_TOWERS:
        raise CheckpointError(f"open_clip_config.json names vision tower {name!r}, not an EVA02-CLIP tower mix knows",
                              f"known: {', '.join(TIMM_TOWERS)}")  # fmt: skip
    pool, proj = vision.get("timm_pool", "avg"), vision.get("timm_proj", "linear")
    if pool != "token" or proj not in (None, ""):
        raise CheckpointError(f"the EVA tower's timm_pool={pool!r}, timm_proj={proj!r} is not EVA02-CLIP's",
                              'EVA02-CLIP checkpoints have "timm_pool": "token", "timm_proj": null')  # fmt: skip
