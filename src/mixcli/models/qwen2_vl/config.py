"""Qwen2-VL's and Qwen2.5-VL's config.json (qwen2_vl / qwen2_5_vl) as dataclasses with upstream field names."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...configs import Config
from ...layers.decoder import DecoderConfig


@dataclass
class VisionConfig(Config):
    """Qwen2VLVisionConfig / Qwen2_5_VLVisionConfig under Qwen2-VL's names: embed_dim is the
    tower's width, hidden_size the merger's output (Qwen2.5-VL calls them hidden_size and out_hidden_size)."""

    depth: int = 32
    embed_dim: int = 1280
    hidden_size: int = 3584  # the language model's width: the merger's output
    hidden_act: str = "quick_gelu"
    mlp_ratio: float = 4
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    # Qwen2.5-VL: RMSNorm + SwiGLU blocks, window attention except in fullatt_block_indexes.
    qwen2_5: bool = False
    intermediate_size: int = 3420
    window_size: int = 112
    fullatt_block_indexes: tuple = ()
    tokens_per_second: float = 4

    @classmethod
    def from_dict(cls, data: dict, qwen2_5: bool = False, **overrides) -> "VisionConfig":
        """vision_config under Qwen2-VL's names; ``qwen2_5`` reads Qwen2.5-VL's names and defaults."""
        if "in_chans" in data:  # the name the published configs use; an explicit in_channels still wins
            data = {"in_channels": data["in_chans"], **data}
        renamed = cls._qwen2_5_names(data) if qwen2_5 else {}
        return super().from_dict(data, **{**renamed, **overrides})

    @staticmethod
    def _qwen2_5_names(data: dict) -> dict:
        """Qwen2.5-VL's vision_config fields under Qwen2-VL's names, with its defaults."""
        return {
            "qwen2_5": True,
            "hidden_act": data.get("hidden_act", "silu"),
            "embed_dim": data.get("hidden_size", 1280),
            "hidden_size": data.get("out_hidden_size", 3584),
            "fullatt_block_indexes": tuple(data.get("fullatt_block_indexes", (7, 15, 23, 31))),
        }

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


@dataclass
class Qwen2VLConfig(Config):
    """Qwen2VLConfig: the published config.json is flat (text fields at the top, vision_config nested)."""

    vision_config: VisionConfig
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    text: DecoderConfig = field(default=None)

    @classmethod
    def from_dict(cls, data: dict, **overrides) -> "Qwen2VLConfig":
        """The config from config.json: text fields as a DecoderConfig, vision_config parsed."""
        # transformers 5 saves the text fields under text_config; the published checkpoints keep them flat.
        flat = {**data, **(data.get("text_config") or {})}
        rope = flat.get("rope_scaling") or flat.get("rope_parameters") or {}
        section = list(rope.get("mrope_section") or [16, 24, 24])
        theta = rope.get("rope_theta", flat.get("rope_theta", 1_000_000.0))
        text = DecoderConfig.from_dict(flat, qkv_bias=True, mrope_section=section, rope_theta=theta)
        qwen2_5 = data.get("model_type") == "qwen2_5_vl"
        vision = VisionConfig.from_dict(data.get("vision_config") or {}, qwen2_5)
        return super().from_dict(data, vision_config=vision, text=text, **overrides)
