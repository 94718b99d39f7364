"""AutoencoderKL parity with diffusers' on tiny SD1.5- and SDXL-shaped VAEs: decode, encode (mean, logvar)."""

from __future__ import annotations

import json

import numpy as np
import paddle
import pytest
import torch
from diffusers import AutoencoderKL as RefVAE
from sd_ref import write_sd15, write_sdxl

from mixcli.diffusion import blocks, winograd
from mixcli.diffusion.vae import VAEConfig, build_vae
from mixcli.errors import CheckpointError
from mixcli.weights import open_checkpoint

FP16_FILE = "diffusion_pytorch_model.fp16.safetensors"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    # Without quant convs and mid-block attention (as some fine-tunes ship), three levels deep.
    bare = RefVAE(
        block_out_channels=[32, 32, 64], down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3, layers_per_block=2, norm_num_groups=16, latent_channels=4,
        use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False,
    )  # fmt: skip
    bare.save_pretrained(root / "bare", safe_serialization=True)
    return {
        "sd15": write_sd15(root / "sd15", fp16=True) / "vae",
        "sdxl": write_sdxl(root / "sdxl") / "vae",
        "bare": root / "bare",
    }


def config_of(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


def load_pair(folder, weights=None, **ref_kwargs):
    ours = build_vae(config_of(folder), open_checkpoint(folder) if weights is None else weights)
    return ours, RefVAE.from_pretrained(str(folder), **ref_kwargs).eval()


def assert_close(ours: paddle.Tensor, ref: torch.Tensor) -> None:
    ours, ref = ours.numpy(), ref.numpy()
    assert ours.shape == ref.shape
    assert float(np.abs(ours - ref).max()) <= 1e-4 * max(1.0, float(np.abs(ref).max()))


def decode_both(ours, ref, z: np.ndarray):
    with paddle.no_grad(), torch.no_grad():
        return ours.decode(paddle.to_tensor(z)), ref.decode(torch.from_numpy(z)).sample


def encode_both(ours, ref, image: np.ndarray):
    with paddle.no_grad(), torch.no_grad():
        return ours.encode(paddle.to_tensor(image)), ref.encode(torch.from_numpy(image)).latent_dist


@pytest.mark.parametrize("name", ["sd15", "sdxl", "bare"])
@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (2, 4, 6, 10)])
def test_decode(folders, name, shape):
    ours, ref = load_pair(folders[name])
    z = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    image, expected = decode_both(ours, ref, z)
    assert image.shape == [shape[0], 3, shape[2] * ours.scale_factor, shape[3] * ours.scale_factor]
    assert_close(image, expected)


@pytest.mark.parametrize("name", ["sd15", "bare"])
def test_encode(folders, name):
    ours, ref = load_pair(folders[name])
    image = np.random.default_rng(1).uniform(-1, 1, (2, 3, 24, 40)).astype(np.float32)
    (mean, logvar), dist = encode_both(ours, ref, image)
    assert_close(mean, dist.mean)
    assert_close(logvar, dist.logvar)


@pytest.mark.parametrize("path", ["winograd", "banded"])
def test_cpu_kernels_at_any_size(folders, path, monkeypatch):
    """The Winograd and the banded convolutions serve large maps only; forced here on the tiny VAE."""
    if path == "winograd":
        monkeypatch.setattr(winograd, "WINOGRAD_MIN_TILES", 1)
        monkeypatch.setattr(winograd, "WINOGRAD_MIN_CHANNELS", 1)
        monkeypatch.setattr(winograd, "WINOGRAD_BAND_BYTES", 1 << 16)
    else:
        monkeypatch.setattr(blocks, "IM2COL_BYTES", 1 << 14)
    ours, ref = load_pair(folders["sd15"])
    z = np.random.default_rng(4).standard_normal((1, 4, 8, 12), dtype=np.float32)
    assert_close(*decode_both(ours, ref, z))
    image = np.random.default_rng(5).uniform(-1, 1, (1, 3, 32, 16)).astype(np.float32)
    (mean, logvar), dist = encode_both(ours, ref, image)
    assert_close(mean, dist.mean)
    assert_close(logvar, dist.logvar)


def test_logvar_is_clamped_as_upstream(folders):
    folder = folders["sd15"]
    weights = dict(open_checkpoint(folder))
    bias = np.zeros(8, np.float32)
    bias[4:6], bias[6:] = 80.0, -80.0  # push the log-variance half far out of [-30, 20]
    weights["quant_conv.bias"] = bias
    ours, ref = load_pair(folder, weights)
    with torch.no_grad():
        ref.quant_conv.bias.copy_(torch.from_numpy(bias))
    image = np.random.default_rng(2).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    (mean, logvar), dist = encode_both(ours, ref, image)
    assert logvar.numpy()[:, :2].min() == 20.0 and logvar.numpy()[:, 2:].max() == -30.0
    assert_close(mean, dist.mean)
    assert_close(logvar, dist.logvar)


def test_fp16_variant_loads(folders):
    folder = folders["sd15"]
    weights = open_checkpoint(folder / FP16_FILE)
    assert {ref.dtype for ref in weights.values()} == {"float16"}
    ours, ref = load_pair(folder, weights, variant="fp16", torch_dtype=torch.float32)
    z = np.random.default_rng(3).standard_normal((1, 4, 8, 8), dtype=np.float32)
    assert_close(*decode_both(ours, ref, z))


def test_config(folders):
    cfg = VAEConfig.from_dict({**config_of(folders["sdxl"]), "_class_name": "AutoencoderKL", "new_key": 1})
    assert cfg.scaling_factor == 0.13025 and cfg.shift_factor is None and cfg.force_upcast
    assert build_vae(config_of(folders["bare"]), open_checkpoint(folders["bare"])).scale_factor == 4


@pytest.mark.parametrize(
    "field, value, shown",
    [
        ("down_block_types", ["AttnDownEncoderBlock2D", "DownEncoderBlock2D"], "AttnDownEncoderBlock2D"),
        ("up_block_types", ["UpDecoderBlock2D", "AttnUpDecoderBlock2D"], "AttnUpDecoderBlock2D"),
        ("act_fn", "gelu", "gelu"),
    ],
)
def test_unsupported_config_names_the_field(folders, field, value, shown):
    config = {**config_of(folders["sd15"]), field: value}
    with pytest.raises(CheckpointError, match=f"unsupported VAE config: {field} = .*{shown}"):
        build_vae(config, open_checkpoint(folders["sd15"]))
