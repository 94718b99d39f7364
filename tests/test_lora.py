"""LoRA adapters (`mix generate --lora FILE[:WEIGHT]`) against diffusers' load_lora_weights + set_adapters on tiny
pipelines: diffusers/PEFT and kohya files, SD1.5 and SDXL, weights other than 1, several adapters, LCM-LoRA with
the lcm scheduler; the errors for files that are not LoRAs or not for the model; the command's records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import error_line, json_of
from sd_lora_ref import reference_with_loras, to_kohya, unet_config, write_lora
from sd_ref import write_sd15, write_sdxl
from test_generate import Recorder, psnr

from mixcli.diffusion.lora import LoraSpec, parse_spec
from mixcli.diffusion.pipeline import Request, load_pipeline, seeded_noise
from mixcli.errors import MixError

PSNR_DB = 35.0
GUIDANCE = {"sd15": 7.5, "sdxl": 5.0}
PROMPT = "a photo of a cat"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """diffusers' side on one thread: on a shared CPU torch's threads wait on each other (a tiny step took 30 s, not 0.6)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    return {"sd15": write_sd15(root / "sd15"), "sdxl": write_sdxl(root / "sdxl")}


@pytest.fixture(scope="module")
def loras(pipes, tmp_path_factory):
    """Per architecture: a PEFT-named LoRA folder (attention, feed-forward, convolutions, text encoders)."""
    root = tmp_path_factory.mktemp("loras")
    return {arch: write_lora(folder, root / arch, seed=1).parent for arch, folder in pipes.items()}


def _latents() -> np.ndarray:
    return seeded_noise(7)((1, 4, 16, 16))


def ours(folder, specs: list[LoraSpec], scheduler: str = "euler", guidance: float | None = None, steps: int = 2, noise=None):
    request = Request(PROMPT, steps=steps, size=(32, 32), scheduler=scheduler, guidance=guidance, latents=_latents())
    return np.asarray(load_pipeline(str(folder), loras=specs).generate(request, noise=noise).images[0])


def theirs(folder, loras: list, arch: str, scheduler: str = "euler", guidance: float | None = None, steps: int = 2):
    pipe = reference_with_loras(folder, loras, scheduler)
    out = pipe(PROMPT, num_inference_steps=steps, height=32, width=32, latents=torch.from_numpy(_latents()),
               guidance_scale=GUIDANCE[arch] if guidance is None else guidance, output_type="np").images  # fmt: skip
    return (out[0] * 255).round().astype(np.uint8)


def _make(kind: str, arch: str, pipes, loras, tmp_path):
    """A LoRA file of one format: "peft", "old-names" (lora.down/lora.up), "alpha" (lora_alpha in the metadata),
    "kohya" (diffusers' module names, some alphas off the rank) or "kohya-sgm" (SDXL's original UNet names)."""
    folder = pipes[arch]
    if kind == "peft":
        return loras[arch]
    if kind in ("old-names", "alpha"):
        extra = {"old_names": True} if kind == "old-names" else {"alpha": 6.0}
        return write_lora(folder, tmp_path / kind, seed=2, **extra)
    source = loras[arch] / "pytorch_lora_weights.safetensors"
    alphas = {m: 2.0 for m in _modules(source) if m.endswith(("attn2.to_k", "conv1", "fc1"))}
    sgm = unet_config(folder) if kind == "kohya-sgm" else None
    return to_kohya(source, tmp_path / "kohya.safetensors", sgm, alphas, sd15=arch == "sd15")


def _modules(file) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        return {k.split(".", 1)[1].rsplit(".lora_", 1)[0] for k in f.keys()}


@pytest.mark.parametrize(
    "arch,kind,weight",
    [("sd15", "peft", 1.0), ("sd15", "old-names", 0.6), ("sd15", "kohya", 0.6), ("sd15", "alpha", 1.0),
     ("sdxl", "peft", 0.6), ("sdxl", "kohya-sgm", 1.0), ("sdxl", "kohya", 1.4)],
)  # fmt: skip
def test_matches_diffusers_load_lora_weights(pipes, loras, tmp_path, arch, kind, weight):
    lora = _make(kind, arch, pipes, loras, tmp_path)
    image = ours(pipes[arch], [LoraSpec(str(lora), weight)])
    assert psnr(image, theirs(pipes[arch], [(lora, weight)], arch)) >= PSNR_DB
    assert psnr(image, ours(pipes[arch], [])) < 30  # the adapter visibly changes the image


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_a_kohya_file_gives_the_image_of_the_diffusers_file_it_came_from(pipes, loras, tmp_path, arch):
    source = loras[arch] / "pytorch_lora_weights.safetensors"
    configs = [None, unet_config(pipes[arch])]  # diffusers' module names, the original SGM ones
    expected = ours(pipes[arch], [LoraSpec(str(loras[arch]), 0.7)])
    for i, config in enumerate(configs):
        kohya = to_kohya(source, tmp_path / f"kohya{i}.safetensors", config, sd15=arch == "sd15")
        assert np.array_equal(ours(pipes[arch], [LoraSpec(str(kohya), 0.7)]), expected)


def test_two_adapters_add_up(pipes, loras, tmp_path):
    second = write_lora(pipes["sd15"], tmp_path / "second", seed=5, conv=False)
    specs = [LoraSpec(str(loras["sd15"]), 0.5), LoraSpec(str(second), 0.8)]
    image = ours(pipes["sd15"], specs)
    assert psnr(image, theirs(pipes["sd15"], [(loras["sd15"], 0.5), (second, 0.8)], "sd15")) >= PSNR_DB
    assert psnr(image, ours(pipes["sd15"], specs[:1])) < 35


def test_lcm_lora_with_the_lcm_scheduler(pipes, tmp_path, monkeypatch):
    """LCM-LoRA's shape: a kohya file over attention, feed-forward and convolutions, run in few steps at guidance 1."""
    source = write_lora(pipes["sd15"], tmp_path / "lcm", seed=3, text=False)
    lcm = to_kohya(source, tmp_path / "lcm.safetensors", sd15=True)
    noise = Recorder(4)
    image = ours(pipes["sd15"], [LoraSpec(str(lcm))], scheduler="lcm", guidance=1.0, steps=3, noise=noise)
    noise.patch(monkeypatch)
    assert psnr(image, theirs(pipes["sd15"], [(lcm, 1.0)], "sd15", scheduler="lcm", guidance=1.0, steps=3)) >= PSNR_DB


def test_merged_at_load_the_networks_stay_the_same(pipes, loras):
    plain, adapted = load_pipeline(str(pipes["sdxl"])), load_pipeline(str(pipes["sdxl"]), loras=[LoraSpec(str(loras["sdxl"]))])
    for a, b in zip([plain.unet, *plain.text_encoders], [adapted.unet, *adapted.text_encoders]):
        shapes = lambda net: [(n, tuple(p.shape), str(p.dtype)) for n, p in net.named_parameters()]  # noqa: E731
        assert shapes(a) == shapes(b)
    assert adapted.loras == [LoraSpec(str(loras["sdxl"]))]


# --- bad input -----------------------------------------------------------------------------------


def _refused(folder, path) -> str:
    with pytest.raises(MixError) as err:
        load_pipeline(str(folder), loras=[LoraSpec(str(path))])
    return str(err.value)


def test_a_file_that_is_not_a_lora(pipes, tmp_path):
    message = _refused(pipes["sd15"], pipes["sd15"] / "unet" / "diffusion_pytorch_model.safetensors")
    assert "diffusion_pytorch_model.safetensors is not a LoRA" in message
    assert "has no pytorch_lora_weights.safetensors" in _refused(pipes["sd15"], tmp_path)
    assert "does not exist" in _refused(pipes["sd15"], tmp_path / "nothing.safetensors")


def test_unsupported_lycoris_tensors_are_named(pipes, loras, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(loras["sd15"] / "pytorch_lora_weights.safetensors"))
    state["lora_unet_mid_block_attentions_0_proj_in.hada_w1_a"] = torch.zeros(4, 4)
    save_file(state, str(tmp_path / "loha.safetensors"))
    message = _refused(pipes["sd15"], tmp_path / "loha.safetensors")
    assert "1 tensors mix cannot apply (lora_unet_mid_block_attentions_0_proj_in.hada_w1_a)" in message and "LoHa" in message


def test_layers_that_match_nothing_are_counted_and_named(pipes, loras, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(loras["sd15"] / "pytorch_lora_weights.safetensors"))
    state = {k.replace("unet.up_blocks.1.", "unet.up_blocks.7."): v for k, v in state.items()}
    save_file(state, str(tmp_path / "moved.safetensors"))
    total, moved = len(_modules(tmp_path / "moved.safetensors")), {m for m in _modules(tmp_path / "moved.safetensors") if ".7." in m}
    message = _refused(pipes["sd15"], tmp_path / "moved.safetensors")
    assert f"{len(moved)} of {total} layers of moved.safetensors match no layer" in message
    assert "unet.up_blocks.7." in message


def test_an_sdxl_lora_on_sd15_is_refused(pipes, loras, tmp_path):
    assert "is an SDXL LoRA" in _refused(pipes["sd15"], loras["sdxl"])
    unet_only = write_lora(pipes["sdxl"], tmp_path / "unet-only", text=False)
    assert "is a LoRA for a UNet whose text width is 64 and the model is SD1.5" in _refused(pipes["sd15"], unet_only)


def test_parse_spec(tmp_path):
    assert parse_spec("style.safetensors") == LoraSpec("style.safetensors", 1.0)
    assert parse_spec("dir/style.safetensors:0.25") == LoraSpec("dir/style.safetensors", 0.25)
    assert parse_spec("a:b:-1.5") == LoraSpec("a:b", -1.5)
    odd = tmp_path / "with:colon"
    odd.mkdir()
    assert parse_spec(str(odd)) == LoraSpec(str(odd), 1.0)
    for bad in ("style.safetensors:strong", "style.safetensors:", ":0.5", "x:nan"):
        with pytest.raises(ValueError):
            parse_spec(bad)


# --- the command ---------------------------------------------------------------------------------


def test_generate_with_lora_records_each_adapter(cli, pipes, loras, tmp_path):
    second = to_kohya(loras["sd15"] / "pytorch_lora_weights.safetensors", tmp_path / "k.safetensors", sd15=True)
    out, latents = tmp_path / "cat.png", tmp_path / "latents.npy"
    np.save(latents, _latents())
    record = json_of(cli("generate", str(pipes["sd15"]), PROMPT, "-o", str(out), "--steps", "2", "--size", "32x32",
                         "--scheduler", "euler", "--latents", str(latents), "--lora", f"{loras['sd15']}:0.5",
                         "--lora", str(second), "--json"))  # fmt: skip
    assert record["loras"] == [{"path": str(loras["sd15"]), "weight": 0.5}, {"path": str(second), "weight": 1.0}]
    with Image.open(out) as png:
        meta, pixels = dict(png.text), np.asarray(png.convert("RGB"), dtype=int)
    assert meta["loras"] == f"{loras['sd15']}:0.5\n{second}:1"
    assert f", Lora: {loras['sd15']}:0.5, Lora: {second}:1" in meta["parameters"]
    expected = ours(pipes["sd15"], [LoraSpec(str(loras["sd15"]), 0.5), LoraSpec(str(second))])
    assert np.abs(pixels - expected).max() <= 1  # the CLI's thread setup may round a pixel differently


def test_generate_without_lora_records_none(cli, pipes, tmp_path):
    record = json_of(cli("generate", str(pipes["sd15"]), PROMPT, "-o", str(tmp_path / "x.png"), "--steps", "1",
                         "--size", "32x32", "--json"))  # fmt: skip
    assert record["loras"] == []
    with Image.open(tmp_path / "x.png") as png:
        assert "loras" not in png.text and "Lora:" not in png.text["parameters"]


def test_a_bad_weight_is_a_usage_error(cli, pipes, tmp_path):
    result = cli("generate", str(pipes["sd15"]), PROMPT, "-o", str(tmp_path / "x.png"), "--lora", "style.safetensors:strong")
    assert result.exit_code == 2 and "'strong'" in result.stderr and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("which", ["sdxl-lora", "missing", "not-a-lora"])
def test_bad_lora_is_one_line(cli, pipes, loras, tmp_path, which):
    path = {"sdxl-lora": loras["sdxl"], "missing": tmp_path / "none.safetensors",
            "not-a-lora": pipes["sd15"] / "vae" / "diffusion_pytorch_model.safetensors"}[which]  # fmt: skip
    result = cli("generate", str(pipes["sd15"]), PROMPT, "-o", str(tmp_path / "x.png"), "--steps", "1", "--size", "32x32",
                 "--lora", str(path))  # fmt: skip
    line = error_line(result)
    assert {"sdxl-lora": "SDXL LoRA", "missing": "does not exist", "not-a-lora": "is not a LoRA"}[which] in line
    assert not (tmp_path / "x.png").exists()
