"""UNet2DConditionModel parity with diffusers' on tiny SD1.5- and SDXL-shaped checkpoints."""

from __future__ import annotations

import json

import numpy as np
import paddle
import pytest
import torch
from diffusers import UNet2DConditionModel as RefUNet
from sd_ref import write_sd15, write_sdxl

from mixcli.diffusion import blocks, winograd
from mixcli.diffusion.unet import UNetConfig, build_unet
from mixcli.errors import CheckpointError
from mixcli.layers import attention, cpu
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


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_parity_through_the_cpu_kernels_at_any_size(folders, name, monkeypatch):
    """The Winograd convolutions (F(4x4, 3x3)) serve large maps only; forced here on the tiny model."""
    monkeypatch.setattr(winograd, "WINOGRAD_MIN_TILES", 1)
    monkeypatch.setattr(winograd, "WINOGRAD_MIN_CHANNELS", 1)
    calls = []
    monkeypatch.setattr(blocks, "winograd_conv", lambda *args, **kw: calls.append(kw) or WINOGRAD(*args, **kw))
    folder = folders[name]
    ours, ref = load_pair(folder)
    inputs = random_inputs(config_of(folder), (2, 4, 16, 24))
    assert_close(run_ours(ours, inputs, 700.0), run_ref(ref, inputs, 700.0))
    assert len(calls) > 10 and {"upsample": True} in calls


WINOGRAD = winograd.winograd_conv


def test_parity_through_paddle_ops_only(folders, monkeypatch):
    """The path other devices take (Paddle's own attention, upsampling and convolutions), run on the CPU."""
    for module in (blocks, winograd, cpu):
        monkeypatch.setattr(module, "on_cpu", lambda x: False)
    folder = folders["sdxl"]
    ours, ref = load_pair(folder)
    inputs = random_inputs(config_of(folder), (2, 4, 8, 12))
    assert_close(run_ours(ours, inputs, 10.0), run_ref(ref, inputs, 10.0))


@pytest.mark.parametrize("conv_tiles", [1024, 1])  # the input transform as a product, or as a convolution
@pytest.mark.parametrize("band_bytes", [64 << 20, 1])  # one band, or one row of tiles per band
@pytest.mark.parametrize(
    "shape, out_channels", [((2, 8, 16, 12), 16), ((1, 32, 8, 8), 4), ((3, 5, 4, 20), 7), ((1, 3, 12, 4), 2)]
)
def test_winograd_convolution(shape, out_channels, band_bytes, conv_tiles, monkeypatch):
    monkeypatch.setattr(winograd, "WINOGRAD_BAND_BYTES", band_bytes)
    monkeypatch.setattr(winograd, "WINOGRAD_CONV_TILES", conv_tiles)
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal(shape, dtype=np.float32))
    weight = paddle.to_tensor(rng.standard_normal((out_channels, shape[1], 3, 3), dtype=np.float32))
    bias = paddle.to_tensor(rng.standard_normal(out_channels, dtype=np.float32))
    shift = paddle.to_tensor(rng.standard_normal((shape[0], out_channels), dtype=np.float32))
    expected = paddle.nn.functional.conv2d(x, weight, bias, padding=1) + shift[:, :, None, None]
    assert_close(winograd.winograd_conv(x, weight, bias, shift).numpy(), expected.numpy())
    expected = paddle.nn.functional.conv2d(x, weight, padding=1).numpy()
    assert_close(winograd.winograd_conv(x, weight, None).numpy(), expected)
    # fused with a 2x nearest upsampling of the input (Upsample2D)
    small = x[:, :, ::2, ::2]
    expected = paddle.nn.functional.conv2d(blocks.upsample2x(small), weight, bias, padding=1).numpy()
    assert_close(winograd.winograd_conv(small, weight, bias, upsample=True).numpy(), expected)


@pytest.mark.parametrize("block_bytes", [16 << 20, 400])  # all heads and rows at once, or a head and 5 rows
@pytest.mark.parametrize("scale", [0.1, 60.0])  # 60: raw exp overflows, the stable recomputation takes over
def test_cpu_attention(scale, block_bytes, monkeypatch):
    """The NumPy attention path in the UNet's layout: (B, T, H*D) viewed as (B, T, H, D), token-major."""
    monkeypatch.setattr(attention, "SCORE_BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, n, 3 * 8), dtype=np.float32) for n in (33, 20, 20))
    heads = [paddle.to_tensor(x.reshape(2, -1, 3, 8)) for x in (q, k, v)]
    out = attention.host_attention(*heads, scale, token_major=True).numpy().reshape(2, 33, 24)
    split = lambda x: x.reshape(2, -1, 3, 8).transpose(0, 2, 1, 3).astype(np.float64)  # noqa: E731
    scores = split(q) @ split(k).transpose(0, 1, 3, 2) * scale
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    expected = (probs / probs.sum(-1, keepdims=True)) @ split(v)
    # scores reach ~300 at scale 60, where float32 itself carries ~3e-5 of error
    np.testing.assert_allclose(out, expected.transpose(0, 2, 1, 3).reshape(2, 33, 24), rtol=1e-4, atol=1e-4)


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
