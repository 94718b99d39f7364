"""The llava-hf config.json (model_type llava, llava_next, llava_onevision) as dataclasses with upstream field
names, with the defaults transformers fills in for the fields older uploads leave out."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...configs import Config
from ...errors import CheckpointError
from ...layers.decoder import DecoderConfig

KINDS = ("llava", "llava_next", "llava_onevision")

# CLIPVisionConfig's and SiglipVisionConfig's own defaults, and the towers LlavaConfig / LlavaNextConfig
# (CLIP ViT-L/14-336) and LlavaOnevisionConfig (SigLIP so400m/14-384) build when config.json has no vision_config.
CLIP_CLASS = {"model_type": "clip_vision_model", "hidden_size": 768, "intermediate_size": 3072, "patch_size": 32,
              "image_size": 224, "num_hidden_layers": 12, "num_attention_heads": 12}  # fmt: skip
SIGLIP_CLASS = {"model_type": "siglip_vision_model", "hidden_size": 768, "intermediate_size": 3072, "patch_size": 16,
                "image_size": 224, "num_hidden_layers": 12, "num_attention_heads": 12,
                "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}  # fmt: skip
CLIP_TOWER = {**CLIP_CLASS, "hidden_size": 1024, "intermediate_size": 4096, "patch_size": 14, "image_size": 336,
              "num_hidden_layers": 24, "num_attention_heads": 16}  # fmt: skip
SIGLIP_TOWER = {**SIGLIP_CLASS, "hidden_size": 1152, "intermediate_size": 4304, "patch_size": 14, "image_size": 384,
                "num_hidden_layers": 26, "num_attention_heads": 16}  # fmt: skip
TOWER_TYPES = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}

# LlamaConfig's, MistralConfig's and Qwen2Config's defaults for what text_config may leave out.
TEXT_DEFAULTS = {
    "llama": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
              "num_attention_heads": 32, "max_position_embeddings": 2048},
    "mistral": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 4096 * 32,
                "sliding_window": 4096},
    "qwen2": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
              "num_attention_heads": 32, "max_position_embeddings": 32768},
}  # fmt: skip

# What each model type's config class defaults to at the top level.
KIND_DEFAULTS = {
    "llava": {"image_token_index": 32000, "vision_feature_select_strategy": "default", "vision_feature_layer": -2},
    "llava_next": {"image_token_index": 32000, "vision_feature_select_strategy": "default", "vision_feature_layer": -2,
                   "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]},
    "llava_onevision": {"image_token_index": 151646, "vision_feature_select_strategy": "full",
                        "vision_feature_layer": -1,
                        "image_grid_pinpoints": [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]},
}  # fmt: skip


@dataclass
class VisionConfig(Config):
    """CLIPVisionConfig / SiglipVisionConfig."""

    model_type: str = "clip_vision_model"
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 336
    patch_size: int = 14
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_dict(cls, data: dict | None, tower: str = "clip_vision_model", **overrides) -> "VisionConfig":
        """vision_config over its tower class's defaults; without one, the tower the model type builds (``tower``)."""
        if data is None:
            return super().from_dict(CLIP_TOWER if tower == "clip_vision_model" else SIGLIP_TOWER, **overrides)
        tower = data.get("model_type", tower)
        if tower not in TOWER_TYPES:
            raise CheckpointError(f"LLaVA with a '{tower}' vision tower is not supported", "supported: CLIP, SigLIP")
        defaults = CLIP_CLASS if TOWER_TYPES[tower] == "clip" else SIGLIP_CLASS
        return super().from_dict({**defaults, **data}, **overrides)

    @property
    def clip(self) -> bool:
        """CLIP (class token, pre-norm, QuickGELU), else SigLIP."""
        return TOWER_TYPES[self.model_type] == "clip"

    @property
    def grid(self) -> int:
        """Patches a side of one tile."""
        return self.image_size // self.patch_size


def text_config(data: dict, tie: bool) -> DecoderConfig:
    """text_config as a DecoderConfig: its type's defaults under what it sets, rope_theta from either place
    transformers keeps it, attention biases as Qwen2 (always) and Llama/Mistral (attention_bias) have them,
    Mistral's sliding window (every layer, where not null)."""
    kind = data.get("model_type", "llama")
    if kind not in TEXT_DEFAULTS:
        raise CheckpointError(f"LLaVA with a '{kind}' language model is not supported yet",
                              "supported: Llama (Vicuna), Mistral, Qwen2")  # fmt: skip
    if kind == "qwen2" and data.get("use_sliding_window"):
        raise CheckpointError("Qwen2's per-layer sliding window (use_sliding_window) is not supported yet",
                              "use a checkpoint with use_sliding_window false, as the published ones are")  # fmt: skip
    rope = data.get("rope_parameters") or data.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise CheckpointError(f"rope scaling '{rope.get('rope_type', rope.get('type'))}' is not supported yet",
                              "use a checkpoint with plain rotary positions")  # fmt: skip
    theta = data.get("rope_theta") or rope.get("rope_theta") or 10000.0
    bias = kind == "qwen2" or bool(data.get("attention_bias", False))
    merged = {**TEXT_DEFAULTS[kind], **data}
    window = merged.get("sliding_window") if kind == "mistral" else None
    return DecoderConfig.from_dict(merged, qkv_bias=bias, rope_theta=theta, tie_word_embeddings=tie, window=window)


@dataclass
class LlavaConfig(Config):
    """LlavaConfig / LlavaNextConfig / LlavaOnevisionConfig: one record, the model type saying which."""

    model_type: str
    vision_config: VisionConfig
    text: DecoderConfig
    image_token_index: int = 32000
    video_token_index: int = 151647  # OneVision only
    projector_hidden_act: str = "gelu"
    vision_feature_select_strategy: str = "default"  # "default" drops the class token, "full" keeps every token
    vision_feature_layer: int | list = -2
    multimodal_projector_bias: bool = True
    image_grid_pinpoints: list | None = None  # NeXT / OneVision: the (height, width) grids anyres picks from
    vision_aspect_ratio: str = "anyres_max_9"  # OneVision: at most 9 tiles' worth of features per image
    text_type: str = field(default="llama")

    @classmethod
    def from_dict(cls, data: dict, **overrides) -> "LlavaConfig":
        kind = data.get("model_type", "")
        if kind not in KINDS:
            raise CheckpointError(f"model type '{kind}' is not a LLaVA one", f"LLaVA types: {', '.join(KINDS)}")
        text = data.get("text_config") or {}
        tie = bool(data.get("tie_word_embeddings") or text.get("tie_word_embeddings"))
        values = {**KIND_DEFAULTS[kind], **{k: v for k, v in data.items() if v is not None}}
        for short, long in (("image_token_id", "image_token_index"), ("video_token_id", "video_token_index")):
            if short in data and long not in data:  # attribute_map's other names
                values[long] = data[short]
        tower = "siglip_vision_model" if kind == "llava_onevision" else "clip_vision_model"
        vision = VisionConfig.from_dict(data.get("vision_config"), tower)
        return super().from_dict(values, vision_config=vision, text=text_config(text, tie),
                                 text_type=text.get("model_type", "llama"), **overrides)  # fmt: skip

    @property
    def feature_layers(self) -> list[int]:
        layer = self.vision_feature_layer
        return [layer] if isinstance(layer, int) else list(layer)

    @property
    def anyres(self) -> bool:
        """NeXT and OneVision tile an image by image_grid_pinpoints; LLaVA-1.5 sees one tile."""
        return self.model_type != "llava"

    @property
    def max_tiles(self) -> int | None:
        """OneVision's anyres_max_N cap on an image's tiles of features; None for NeXT (no cap)."""
        if self.model_type != "llava_onevision":
            return None
        return int(self.vision_aspect_ratio.strip("anyres_max_"))  # upstream parses it so
