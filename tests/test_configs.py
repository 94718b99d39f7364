"""The one config ``from_dict`` (mixcli.configs) and the seven configs built through it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from mixcli.configs import Config, from_dict, init_fields
from mixcli.diffusion.clip import CLIPTextConfig
from mixcli.diffusion.unet import UNetConfig
from mixcli.diffusion.vae import VAEConfig
from mixcli.errors import CheckpointError
from mixcli.layers.decoder import DecoderConfig
from mixcli.models.internvl_chat.config import InternVLConfig
from mixcli.models.internvl_chat.config import VisionConfig as InternVisionConfig
from mixcli.models.qwen2_vl.config import Qwen2VLConfig
from mixcli.models.qwen2_vl.config import VisionConfig as QwenVisionConfig
from mixcli.registry import ModelSpec

TEXT = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 4}


@dataclass
class Toy(Config):
    """A config with a required field, a default, and a field derived in __post_init__."""

    width: int
    depth: int = 2
    area: int = field(init=False)

    def __post_init__(self):
        self.area = self.width * self.depth


# --- the helper -----------------------------------------------------------------------------


def test_unknown_keys_are_ignored_and_defaults_filled():
    toy = Toy.from_dict({"width": 3, "_class_name": "Toy", "future_key": 1})
    assert (toy.width, toy.depth) == (3, 2)
    assert not hasattr(toy, "future_key")


def test_overrides_win_over_data():
    assert Toy.from_dict({"width": 3, "depth": 5}, depth=7).depth == 7
    assert Toy.from_dict({}, width=4).width == 4  # an override can supply a required field


def test_a_misspelt_override_is_an_error():
    with pytest.raises(TypeError, match="dept"):
        Toy.from_dict({"width": 3}, dept=7)


def test_non_init_fields_are_derived_not_read():
    assert init_fields(Toy) == {"width", "depth"}
    assert Toy.from_dict({"width": 3, "area": 100}).area == 6
    with pytest.raises(TypeError, match="area"):
        Toy.from_dict({"width": 3}, area=100)


def test_post_init_runs():
    assert Toy.from_dict({"width": 3, "depth": 4}).area == 12


def test_a_missing_required_field_is_an_error():
    with pytest.raises(TypeError, match="width"):
        from_dict(Toy, {"depth": 1})


def test_the_function_and_the_classmethod_agree():
    data = {"width": 2, "depth": 3, "extra": 0}
    assert from_dict(Toy, data, depth=5) == Toy.from_dict(data, depth=5) == Toy(2, 5)


def test_data_is_not_modified():
    data = {"width": 2, "extra": 0}
    Toy.from_dict(data, depth=9)
    assert data == {"width": 2, "extra": 0}


# --- the seven configs ----------------------------------------------------------------------


def test_decoder_config():
    cfg = DecoderConfig.from_dict({**TEXT, "torch_dtype": "float32"}, qkv_bias=True)
    assert cfg.qkv_bias and cfg.vocab_size == 64
    assert (cfg.num_key_value_heads, cfg.head_dim) == (4, 8)  # filled by __post_init__


def test_clip_text_config_reads_null_as_the_default():
    cfg = CLIPTextConfig.from_dict({"hidden_size": 64, "projection_dim": None, "_name_or_path": "x"})
    assert (cfg.hidden_size, cfg.projection_dim) == (64, 512)


def test_unet_config():
    cfg = UNetConfig.from_dict({"_class_name": "UNet2DConditionModel", "in_channels": 9, "_diffusers_version": "0"})
    assert cfg.in_channels == 9 and cfg.out_channels == 4
    with pytest.raises(CheckpointError, match="attention_type"):  # __post_init__ still checks support
        UNetConfig.from_dict({"attention_type": "gated", "new_key": 1})


def test_vae_config():
    cfg = VAEConfig.from_dict({"_class_name": "AutoencoderKL", "latent_channels": 16})
    assert cfg.latent_channels == 16 and cfg.scaling_factor == 0.18215
    with pytest.raises(CheckpointError, match="act_fn"):
        VAEConfig.from_dict({"act_fn": "relu", "new_key": 1})


def test_model_spec_takes_the_alias_from_its_key():
    data = {"repo": "a/b", "family": "f", "task": "t", "include": ["*.json"], "alias": "other", "future": 1}
    spec = ModelSpec.from_dict("mine", data)
    assert (spec.alias, spec.repo, spec.include, spec.source) == ("mine", "a/b", ("*.json",), "hub")
    assert data["include"] == ["*.json"]
    hash(spec)


def test_intern_vision_config():
    cfg = InternVisionConfig.from_dict({"hidden_size": 64, "architectures": ["InternVisionModel"]})
    assert (cfg.hidden_size, cfg.patch_size) == (64, 14)


def test_internvl_config_derives_its_language_model():
    llm = {**TEXT, "architectures": ["Qwen2ForCausalLM"]}
    data = {"llm_config": llm, "vision_config": {"patch_size": 16}, "template": "x", "llm_kind": "bad", "text": 0}
    cfg = InternVLConfig.from_dict({**data, "unknown": 1})
    assert (cfg.llm_kind, cfg.template, cfg.vision_config.patch_size) == ("qwen2", "x", 16)
    assert isinstance(cfg.text, DecoderConfig) and cfg.text.qkv_bias


def test_internvl_config_reads_a_null_vision_config_as_the_default():
    cfg = InternVLConfig.from_dict({"llm_config": {**TEXT, "model_type": "llama"}, "vision_config": None})
    assert cfg.vision_config == InternVisionConfig() and cfg.llm_kind == "llama"


def test_qwen_vision_config_names():
    assert QwenVisionConfig.from_dict({"in_chans": 1, "depth": 2, "unknown": 0}).in_channels == 1
    assert QwenVisionConfig.from_dict({"in_chans": 1, "in_channels": 2}).in_channels == 2
    cfg = QwenVisionConfig.from_dict({"hidden_size": 64, "out_hidden_size": 32, "fullatt_block_indexes": [0]}, True)
    assert (cfg.qwen2_5, cfg.embed_dim, cfg.hidden_size, cfg.hidden_act) == (True, 64, 32, "silu")
    assert cfg.fullatt_block_indexes == (0,)


def test_qwen2_vl_config():
    data = {**TEXT, "model_type": "qwen2_vl", "image_token_id": 7, "vision_config": {"depth": 1}, "unknown": 1}
    cfg = Qwen2VLConfig.from_dict({**data, "text": "ignored"})
    assert (cfg.image_token_id, cfg.video_token_id, cfg.vision_config.depth) == (7, 151656, 1)
    assert cfg.text.vocab_size == 64 and cfg.text.qkv_bias and cfg.text.mrope_section == [16, 24, 24]
    assert not cfg.vision_config.qwen2_5
    assert Qwen2VLConfig.from_dict({**data, "model_type": "qwen2_5_vl"}).vision_config.qwen2_5
