"""Qwen2-VL's and Qwen2.5-VL's config.json (qwen2_vl / qwen2_5_vl) as dataclasses with upstream field names."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ...layers.decoder import DecoderConfig


def _known(cls, data: dict) -> dict:
    names = {f.name for f in fields(cls) if f.init}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class VisionConfig:
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
    def from_dict(cls, data: dict, qwen2_5: bool = False) -> "VisionConfig":
        values = _known(cls, data)
        if "in_chans" in data and "in_channels" not in data:  # the name the published configs use
            values["in_channels"] = data["in_chans"]
        if qwen2_5:
            values.update(qwen2_5=True, hidden_act=data.get("hidden_act", "silu"))
            values["embed_dim"] = data.get("hidden_size", 1280)
            values["hidden_size"] = data.get("out_hidden_size", 3584)
            values["fullatt_block_indexes"] = tuple(data.get("fullatt_block_indexes", (7, 15, 23, 31)))
        return cls(**values)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


@dataclass
class Qwen2VLConfig:
    """Qwen2VLConfig: the published config.json is flat (text fields at the top, vision_config nested)."""

    vision_config: VisionConfig
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    text: DecoderConfig = field(default=None)

    @classmethod
    def from_dict(cls, data: dict) -> "Qwen2VLConfig":
        # transformers 5 saves the text fields under text_config; the published checkpoints keep them flat.
        flat = {**data, **(data.get("text_config") or {})}
        rope = flat.get("rope_scaling") or flat.get("rope_parameters") or {}
        section = list(rope.get("mrope_section") or [16, 24, 24])
        theta = rope.get("rope_theta", flat.get("rope_theta", 1_000_000.0))
        text = DecoderConfig.from_dict(flat, qkv_bias=True, mrope_section=section, rope_theta=theta)
        values = _known(cls, data)
        qwen2_5 = data.get("model_type") == "qwen2_5_vl"
        values["vision_config"] = VisionConfig.from_dict(data.get("vision_config") or {}, qwen2_5)
        return cls(**{**values, "text": text})
