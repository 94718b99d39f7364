"""UNet2DConditionModel parity with diffusers' on tiny SD1.5- and SDXL-shaped checkpoints."""

from __future__ import annotations

import json

import numpy as np
import paddle
import pytest
import torch
from diffusers import UNet2DConditionModel as RefUNet
from sd_ref import write_sd15, write_sdxl

from mixcli.diffusion.unet import UNetConfig, build_unet
from mixcli.errors import CheckpointError
from mixcli.weights import open_checkpoint

FP16_FILE = "diffusion_pytorch_model.fp16.safetensors"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("unet")
    return {
        "sd15": write_sd15(root / "sd15", fp16=True) / "unet",
        "sdxl": write_sdxl(root / "sdxl") / "unet",
        # an LCM-distilled UNet's guidance embedding, and transformer depth given per block
        "lcm": write_sd15(root / "lcm", unet_kwargs={"time_cond_proj_dim": 16, "transformer_layers_per_block": [2, 1]})
        / "unet",
    }


def config_of(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


def load_pair(folder, weights=None, **ref_kwargs):
    ours = build_unet(config_of(folder), open_checkpoint(folder) if weights is None else weights)
    ref = RefUNet.from_pretrained(str(folder), **ref_kwargs).eval()
    return ours, ref


def random_inputs(config: dict, shape: tuple, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = shape[0]
    inputs = {
        "sample": rng.standard_normal(shape, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((batch, 7, config["cross_attention_dim"]), dtype=np.float32),
    }
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        inputs["text_embeds"] = rng.standard_normal((batch, pooled), dtype=np.float32)
        inputs["time_ids"] = np.tile(np.array([[shape[2] * 8, shape[3] * 8, 0, 0, 128, 96]], np.float32), (batch, 1))
    if config.get("time_cond_proj_dim"):
        inputs["timestep_cond"] = rng.standard_normal((batch, config["time_cond_proj_dim"]), dtype=np.float32)
    return inputs


def run_ours(model, inputs: dict, timestep) -> np.ndarray:
    tensors = {k: paddle.to_tensor(v) for k, v in inputs.items()}
    if isinstance(timestep, np.ndarray):
        timestep = paddle.to_tensor(timestep)
    with paddle.no_grad():
        return model(timestep=timestep, **tensors).numpy()


def run_ref(model, inputs: dict, timestep) -> np.ndarray:
    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
    added = {k: tensors.pop(k) for k in ("text_embeds", "time_ids") if k in tensors}
    if isinstance(timestep, np.ndarray):
        timestep = torch.from_numpy(timestep)
    with torch.no_grad():
        return model(timestep=timestep, added_cond_kwargs=added or None, **tensors).sample.numpy()


def assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    scale = max(1.0, float(np.abs(ref).max()))
    assert float(np.abs(ours - ref).max()) <= 1e-4 * scale


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
@pytest.mark.parametrize(
    "shape, timestep",
    [
        ((2, 4, 16, 16), 981.0),  # a float, broadcast over the batch
        ((2, 4, 12, 20), 500),  # non-square, an int
        ((1, 4, 9, 14), np.array(321.5, np.float32)),  # odd sizes (upsampling to the skip's size), a 0-d tensor
        ((2, 4, 16, 8), np.array([999, 1], np.int64)),  # one timestep per sample, a 1-d tensor
    ],
)
def test_parity(folders, name, shape, timestep):
    folder = folders[name]
    ours, ref = load_pair(folder)
    inputs = random_inputs(config_of(folder), shape)
    assert_close(run_ours(ours, inputs, timestep), run_ref(ref, inputs, timestep))


def test_guidance_embedding_and_per_block_depth(folders):
    folder = folders["lcm"]
    ours, ref = load_pair(folder)
    assert ours.config.time_cond_proj_dim == 16
    assert len(ours.down_blocks[0].attentions[0].transformer_blocks) == 2
    inputs = random_inputs(config_of(folder), (2, 4, 16, 16))
    assert_close(run_ours(ours, inputs, 499.0), run_ref(ref, inputs, 499.0))


def test_fp16_variant_loads(folders):
    folder = folders["sd15"]
    weights = open_checkpoint(folder / FP16_FILE)
    assert {ref.dtype for ref in weights.values()} == {"float16"}
    ours, ref = load_pair(folder, weights, variant="fp16", torch_dtype=torch.float32)
    assert ours.conv_in.weight.dtype == paddle.float32
    inputs = random_inputs(config_of(folder), (1, 4, 16, 16))
    assert_close(run_ours(ours, inputs, 10), run_ref(ref, inputs, 10))


def test_config_reads_upstream_names(folders):
    cfg = UNetConfig.from_dict(config_of(folders["sdxl"]))
    assert cfg.heads == [2, 4] and cfg.depths == [1, 2] and cfg.up_depths == [2, 1]
    assert cfg.addition_embed_type == "text_time" and cfg.use_linear_projection
    sd = UNetConfig.from_dict({**config_of(folders["sd15"]), "num_attention_heads": 4, "some_future_key": 1})
    assert sd.heads == [4, 4]


@pytest.mark.parametrize(
    "field, value, shown",
    [
        ("down_block_types", ["SimpleCrossAttnDownBlock2D", "DownBlock2D"], "SimpleCrossAttnDownBlock2D"),
        ("up_block_types", ["UpBlock2D", "AttnUpBlock2D"], "AttnUpBlock2D"),
        ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn", "UNetMidBlock2DSimpleCrossAttn"),
        ("addition_embed_type", "text_image", "text_image"),
        ("class_embed_type", "timestep", "timestep"),
        ("resnet_time_scale_shift", "scale_shift", "scale_shift"),
        ("only_cross_attention", True, "True"),
        ("time_embedding_type", "fourier", "fourier"),
    ],
)
def test_unsupported_config_names_the_field(folders, field, value, shown):
    config = {**config_of(folders["sd15"]), field: value}
    with pytest.raises(CheckpointError, match=f"unsupported UNet config: {field} = .*{shown}"):
        build_unet(config, open_checkpoint(folders["sd15"]))


def test_weights_that_do_not_match_the_config(folders):
    weights = dict(open_checkpoint(folders["sd15"]))
    del weights["mid_block.attentions.0.proj_in.weight"]
    with pytest.raises(CheckpointError, match="missing"):
        build_unet(config_of(folders["sd15"]), weights)
    with pytest.raises(CheckpointError, match="shape"):
        build_unet({**config_of(folders["sd15"]), "cross_attention_dim": 16}, open_checkpoint(folders["sd15"]))
