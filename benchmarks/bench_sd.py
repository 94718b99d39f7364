"""Stable Diffusion 1.5 at its real size with random weights, fp32 on CPU: one UNet step on 512x512 latents with
guidance (latents (2, 4, 64, 64), text (2, 77, 768)), one ControlNet step (lllyasviel/sd-controlnet-canny's
configuration, then the UNet with its residuals) and one VAE decode (1, 4, 64, 64) -> (1, 3, 512, 512), mix
(Paddle) against diffusers on the same safetensors, side by side in one run: each side runs in its own process
(so neither framework's threads or allocator disturb the other, and each one's peak RSS is its own), and the
two take turns round by round. Prints the times, their ratio, the outputs' largest difference and the peak RSS.
Needs about 12 GB of RAM (the ControlNet step: UNet and ControlNet on each side).

    python -m pytest benchmarks/bench_sd.py --benchmark-only -s
"""

from __future__ import annotations

import json
import re
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from sides import Side, write_in_child

# stable-diffusion-v1-5/stable-diffusion-v1-5: unet/config.json and vae/config.json (the fields that shape the nets).
SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280], "attention_head_dim": 8, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "norm_num_groups": 32,
}  # fmt: skip
SD15_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 512,
}  # fmt: skip
# lllyasviel/sd-controlnet-canny's config.json (the fields that shape the net): the UNet's encoder.
SD15_CONTROLNET = {
    "in_channels": 4, "conditioning_channels": 3, "layers_per_block": 2, "block_out_channels": [320, 640, 1280, 1280],
    "attention_head_dim": 8, "cross_attention_dim": 768, "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "conditioning_embedding_out_channels": [16, 32, 96, 256], "norm_num_groups": 32,
}  # fmt: skip
ROUNDS = 3


def write(folder: str) -> None:
    """Random SD1.5 UNet and VAE weights (diffusers' init) in diffusers' layout."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET)
    with torch.no_grad():  # diffusers zero-initialises conv_out; random values make the outputs comparable
        unet.conv_out.weight.normal_(0.0, 0.02)
    unet.save_pretrained(folder + "/unet", safe_serialization=True)
    AutoencoderKL(**SD15_VAE).save_pretrained(folder + "/vae", safe_serialization=True)
    write_controlnet(folder)


def write_controlnet(folder: str) -> None:
    """A random SD1.5 ControlNet, its zero-initialised convolutions given values so its residuals are real."""
    import torch
    from diffusers import ControlNetModel

    net = ControlNetModel(**SD15_CONTROLNET)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                param.normal_(0.0, 0.02)
    net.save_pretrained(folder + "/controlnet", safe_serialization=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The weights, written once in a child process (3.8 GB, removed afterwards)."""
    yield from write_in_child("bench_sd", tmp_path_factory.mktemp("sd15"))


def inputs(part: str) -> tuple:
    """UNet: latents, timestep, text states; ControlNet: the same and a 512x512 control image; VAE: latents."""
    rng = np.random.default_rng(0)
    if part == "controlnet":
        return (*inputs("unet"), rng.random((1, 3, 512, 512), dtype=np.float32))
    if part == "unet":
        latents = rng.standard_normal((2, 4, 64, 64), dtype=np.float32)
        return latents, 981.0, rng.standard_normal((2, 77, 768), dtype=np.float32)
    return (rng.standard_normal((1, 4, 64, 64), dtype=np.float32),)


def mix_runner(part: str, path: Path):
    """mix's model of ``part``, and a function running it once on ``inputs(part)``."""
    from mixcli.runtime import import_paddle

    paddle = import_paddle()  # threads configured before the first Paddle op
    from mixcli.diffusion.unet import build_unet
    from mixcli.diffusion.vae import build_vae
    from mixcli.weights import open_checkpoint

    if part == "controlnet":
        return mix_controlnet_runner(paddle, path)
    if part == "unet-lora":
        return mix_lora_runner(paddle, path.parent / "unet")
    build = build_unet if part == "unet" else build_vae
    model = build(json.loads((path / "config.json").read_text()), open_checkpoint(path))
    args = [paddle.to_tensor(a) if isinstance(a, np.ndarray) else a for a in inputs(part)]

    def run() -> np.ndarray:
        with paddle.no_grad():
            return (model(*args) if part == "unet" else model.decode(*args)).numpy()

    return run


LORA_TARGETS = re.compile(r"\.(to_[qkv]|to_out\.0|ff\.net\.0\.proj|ff\.net\.2)\.weight$")


def random_lora(weights, rank: int = 16) -> dict[str, np.ndarray]:
    """A PEFT-named rank-16 LoRA over every attention and feed-forward linear of the UNet."""
    rng = np.random.default_rng(0)
    lora = {}
    for name in filter(LORA_TARGETS.search, weights):
        rows, cols = weights[name].shape
        module = "unet." + name.removesuffix(".weight")
        lora[f"{module}.lora_A.weight"] = rng.standard_normal((rank, cols), dtype=np.float32) * 0.01
        lora[f"{module}.lora_B.weight"] = rng.standard_normal((rows, rank), dtype=np.float32) * 0.01
    return lora


def mix_lora_runner(paddle, path: Path):
    """The UNet step with a LoRA merged in at load, as `mix generate --lora` builds it."""
    from mixcli.diffusion.loading import PipelineParts
    from mixcli.diffusion.lora import LoraSpec, apply_loras
    from mixcli.diffusion.unet import build_unet
    from mixcli.weights import open_checkpoint, save_safetensors

    config, weights = json.loads((path / "config.json").read_text()), open_checkpoint(path)
    lora = path.parent / "lora.safetensors"
    if not lora.exists():
        save_safetensors(random_lora(weights), lora)
    parts = apply_loras(PipelineParts("sd15", {"unet": config}, {"unet": weights}, {}, {}), [LoraSpec(str(lora), 0.8)])
    model = build_unet(config, parts.weights["unet"])
    args = [paddle.to_tensor(a) if isinstance(a, np.ndarray) else a for a in inputs("unet")]

    def run() -> np.ndarray:
        with paddle.no_grad():
            return model(*args).numpy()

    return run


def diffusers_runner(part: str, path: Path):
    """diffusers' model of ``part``, and a function running it once on ``inputs(part)``."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from mixcli.runtime import cpu_threads

    torch.set_num_threads(cpu_threads())
    if part == "controlnet":
        return diffusers_controlnet_runner(path)
    model = (UNet2DConditionModel if part == "unet" else AutoencoderKL).from_pretrained(str(path)).eval()
    args = [torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in inputs(part)]

    def run() -> np.ndarray:
        with torch.inference_mode():
            return (model(*args) if part == "unet" else model.decode(*args)).sample.numpy()

    return run


def mix_controlnet_runner(paddle, path: Path):
    """A ControlNet step as mix's pipeline runs it: the ControlNet, then the UNet with its residuals; the control
    image's embedding is made once per image, before the steps."""
    from mixcli.diffusion.controlnet import build_controlnet
    from mixcli.diffusion.unet import build_unet
    from mixcli.weights import open_checkpoint

    unet = build_unet(json.loads((path.parent / "unet" / "config.json").read_text()), open_checkpoint(path.parent / "unet"))
    net = build_controlnet(json.loads((path / "config.json").read_text()), open_checkpoint(path))
    latents, t, text, image = (paddle.to_tensor(a) if isinstance(a, np.ndarray) else a for a in inputs("controlnet"))
    with paddle.no_grad():
        condition = net.embed_condition(image)

    def run() -> np.ndarray:
        with paddle.no_grad():
            down, mid = net(latents, t, text, condition, scale=1.0)
            return unet(latents, t, text, down_residuals=down, mid_residual=mid).numpy()

    return run


def diffusers_controlnet_runner(path: Path):
    """A ControlNet step as diffusers' StableDiffusionControlNetPipeline runs it (the control image, one per
    guidance half, goes through the ControlNet every step)."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(path.parent / "unet")).eval()
    net = ControlNetModel.from_pretrained(str(path)).eval()
    latents, t, text, image = (torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in inputs("controlnet"))
    image = torch.cat([image, image])

    def run() -> np.ndarray:
        with torch.inference_mode():
            down, mid = net(latents, t, text, controlnet_cond=image, conditioning_scale=1.0, return_dict=False)
            return unet(latents, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample.numpy()

    return run


def commands(side: str, part: str, folder: str) -> dict:
    """The child's commands: "run" runs once and answers the seconds taken (the first run also saves its
    output next to the weights)."""
    run = (mix_runner if side == "mix" else diffusers_runner)(part, Path(folder) / part)
    saved = Path(folder) / f"{side}_{part}.npy"

    def timed() -> float:
        start = time.perf_counter()
        out = run()
        seconds = time.perf_counter() - start
        if not saved.exists():
            np.save(saved, out)
        return seconds

    return {"run": timed}


def side_by_side(benchmark, part: str, folder: Path) -> None:
    """Time mix with pytest-benchmark and diffusers in each round's setup, alternating, then report."""
    with Side("bench_sd", "mix", part, folder) as mix, Side("bench_sd", "diffusers", part, folder) as ref:
        theirs, mine = [], []
        benchmark.pedantic(lambda: mine.append(mix.ask("run")), setup=lambda: theirs.append(ref.ask("run")),
                           rounds=ROUNDS, warmup_rounds=1)  # fmt: skip
        peak = {"mix_peak_rss_gb": round(mix.ask("rss"), 2), "diffusers_peak_rss_gb": round(ref.ask("rss"), 2)}
    got, expected = np.load(folder / f"mix_{part}.npy"), np.load(folder / f"diffusers_{part}.npy")
    mine_s, theirs_s = statistics.median(mine[-ROUNDS:]), statistics.median(theirs[-ROUNDS:])
    benchmark.extra_info.update(
        mix_s=round(mine_s, 3), diffusers_s=round(theirs_s, 3), speedup=round(theirs_s / mine_s, 2),
        max_abs_diff=float(np.abs(got - expected).max()), ref_max_abs=float(np.abs(expected).max()), **peak,
    )  # fmt: skip
    print("\n", part, benchmark.extra_info)


def test_unet_step(benchmark, checkpoint):
    side_by_side(benchmark, "unet", checkpoint)


def test_vae_decode(benchmark, checkpoint):
    side_by_side(benchmark, "vae", checkpoint)


def test_controlnet_step(benchmark, checkpoint):
    side_by_side(benchmark, "controlnet", checkpoint)


def test_lora_merged_unet_step(benchmark, checkpoint):
    """A LoRA merged at load costs nothing per step: mix's UNet step with one (rank 16 on every attention and
    feed-forward linear) against the plain step, alternating."""
    with Side("bench_sd", "mix", "unet", checkpoint) as plain, Side("bench_sd", "mix", "unet-lora", checkpoint) as merged:
        plain_s, merged_s = [], []
        benchmark.pedantic(lambda: merged_s.append(merged.ask("run")), setup=lambda: plain_s.append(plain.ask("run")),
                           rounds=ROUNDS, warmup_rounds=1)  # fmt: skip
    mine, base = statistics.median(merged_s[-ROUNDS:]), statistics.median(plain_s[-ROUNDS:])
    benchmark.extra_info.update(plain_s=round(base, 3), lora_merged_s=round(mine, 3), ratio=round(mine / base, 3))
    print("\n unet-lora", benchmark.extra_info)
