"""InternVL's config.json (model_type internvl_chat) as dataclasses with the upstream field names."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...configs import Config
from ...errors import CheckpointError
from ...layers.decoder import DecoderConfig


@dataclass
class VisionConfig(Config):
    """InternVisionConfig (modeling_intern_vit.py)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_attention_heads: int = 16
    num_hidden_layers: int = 24
    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    qkv_bias: bool = True
    qk_normalization: bool = False
    norm_type: str = "layer_norm"
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"


# llm_config architectures we can run, mapped to how their config reads as a DecoderConfig.
LLM_ARCHITECTURES = {
    "Qwen2ForCausalLM": "qwen2",
    "InternLM2ForCausalLM": "internlm2",
    "LlamaForCausalLM": "llama",
    "Phi3ForCausalLM": "phi3",
}


def decoder_config(llm: dict) -> tuple[str, DecoderConfig]:
    """The language model's kind and its DecoderConfig from llm_config."""
    arch = (llm.get("architectures") or [""])[0]
    kind = LLM_ARCHITECTURES.get(arch) or {"qwen2": "qwen2", "internlm2": "internlm2", "llama": "llama"}.get(
        llm.get("model_type", "")
    )
    if kind is None or kind == "phi3":
        raise CheckpointError(
            f"InternVL with a '{arch or llm.get('model_type')}' language model is not supported yet",
            "supported: Qwen2, InternLM2, Llama backbones",
        )
    bias = {"qwen2": True, "internlm2": bool(llm.get("bias", False)), "llama": bool(llm.get("attention_bias", False))}
    return kind, DecoderConfig.from_dict(llm, qkv_bias=bias[kind])


@dataclass
class InternVLConfig(Config):
    """InternVLChatConfig (configuration_internvl_chat.py)."""

    vision_config: VisionConfig
    llm_config: dict
    # Defaults are upstream's InternVLChatConfig defaults; real checkpoints set them all.
    template: str = "internvl2_5"
    select_layer: int = -1
    downsample_ratio: float = 0.5
    ps_version: str = "v1"
    force_image_size: int | None = None
    dynamic_image_size: bool = False
    use_thumbnail: bool = False
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 6
    llm_kind: str = field(init=False)
    text: DecoderConfig = field(init=False)

    def __post_init__(self):
        self.llm_kind, self.text = decoder_config(self.llm_config)

    @classmethod
    def from_dict(cls, data: dict, **overrides) -> "InternVLConfig":
        """The config from config.json: vision_config parsed, llm_config kept as a dict (null reads as empty)."""
        vision = VisionConfig.from_dict(data.get("vision_config") or {})
        return super().from_dict(data, vision_config=vision, llm_config=data.get("llm_config") or {}, **overrides)

    @property
    def image_size(self) -> int:
        return self.force_image_size or self.vision_config.image_size

    @property
    def num_image_token(self) -> int:
        """Tokens per tile: (image_size / patch)^2 * downsample_ratio^2, as upstream computes it."""
        patch = self.vision_config.patch_size
        return int((self.image_size // patch) ** 2 * (self.downsample_ratio**2))
