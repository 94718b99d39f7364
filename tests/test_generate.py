"""`mix generate`: the Stable Diffusion 1.5 / SDXL pipelines against diffusers' on tiny random pipelines,
for every scheduler, with and without guidance, txt2img and img2img, and the command's contract."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from helpers import error_line, json_of, picture
from sd_ref import reference_pipeline, write_sd15, write_sdxl

from mixcli.diffusion.pipeline import Request, load_pipeline, seeded_noise
from mixcli.diffusion.schedulers import SCHEDULER_NAMES

PSNR_DB = 35.0


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return write_sd15(tmp_path_factory.mktemp("sd15") / "pipe", fp16=True)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return write_sdxl(tmp_path_factory.mktemp("sdxl") / "pipe")


@pytest.fixture(scope="module")
def ours(sd15, sdxl):
    return {"sd15": load_pipeline(str(sd15)), "sdxl": load_pipeline(str(sdxl))}


@pytest.fixture(scope="module")
def theirs(sd15, sdxl):
    return {"sd15": reference_pipeline(sd15), "sdxl": reference_pipeline(sdxl)}


class Recorder:
    """Our pipeline's noise draws, replayed in the same order to diffusers' randn_tensor."""

    def __init__(self, seed: int = 0):
        self.draw, self.arrays = seeded_noise(seed), []

    def __call__(self, shape):
        self.arrays.append(self.draw(shape))
        return self.arrays[-1]

    def patch(self, monkeypatch):
        import torch

        queue = list(self.arrays)

        def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
            array = queue.pop(0)
            assert tuple(array.shape) == tuple(shape), (array.shape, shape)
            return torch.from_numpy(array.copy()).to(dtype or torch.float32)

        for name, module in list(sys.modules.items()):
            if name.startswith("diffusers") and hasattr(module, "randn_tensor"):
                monkeypatch.setattr(module, "randn_tensor", randn_tensor)


def diffusers_scheduler(original, name: str):
    """The scheduler diffusers users switch to for one of our names, from the checkpoint's scheduler."""
    import diffusers

    classes = {
        "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "euler-a": "EulerAncestralDiscreteScheduler",
        "dpm++2m": "DPMSolverMultistepScheduler", "dpm++2m-karras": "DPMSolverMultistepScheduler",
        "lcm": "LCMScheduler", "pndm": "PNDMScheduler",
    }
    extra = {"use_karras_sigmas": True} if name == "dpm++2m-karras" else {}
    return getattr(diffusers, classes[name]).from_config(original.config, **extra)


def psnr(a: Image.Image, b: np.ndarray) -> float:
    diff = np.asarray(a, dtype=np.float64) - b.astype(np.float64)
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run_both(ours, theirs, monkeypatch, request: Request, latents: np.ndarray | None = None, img2img: bool = False):
    import torch

    import diffusers

    noise = Recorder(request.seed)
    result = ours.generate(request, noise=noise)
    components = dict(theirs.components)  # the fixture's pipeline itself is never changed
    if request.scheduler:
        components["scheduler"] = diffusers_scheduler(theirs.scheduler, request.scheduler)
    cls = type(theirs)
    if img2img:
        cls = diffusers.StableDiffusionXLImg2ImgPipeline if "XL" in cls.__name__ else diffusers.StableDiffusionImg2ImgPipeline
    pipe = cls(**components)
    pipe.set_progress_bar_config(disable=True)
    noise.patch(monkeypatch)
    width, height = result.size
    kwargs = dict(
        prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
        guidance_scale=result.guidance, num_images_per_prompt=request.num_images, output_type="np",
    )
    if img2img:
        kwargs.update(image=request.image, strength=request.strength)
    else:
        kwargs.update(height=height, width=width, latents=None if latents is None else torch.from_numpy(latents))
    images = pipe(**kwargs).images
    reference = (images * 255).round().astype(np.uint8)
    return result, reference


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_sd15_matches_diffusers_for_every_scheduler(ours, theirs, monkeypatch, scheduler):
    latents = seeded_noise(7)((1, 4, 16, 16))
    request = Request("a photo of a cat", steps=4, size=(32, 32), seed=1, scheduler=scheduler, latents=latents)
    result, reference = run_both(ours["sd15"], theirs["sd15"], monkeypatch, request, latents)
    assert result.scheduler == scheduler
    assert psnr(result.images[0], reference[0]) >= PSNR_DB


@pytest.mark.parametrize("scheduler", [None, "dpm++2m-karras", "euler-a", "ddim"])
def test_sdxl_matches_diffusers(ours, theirs, monkeypatch, scheduler):
    latents = seeded_noise(3)((1, 4, 16, 16))
    request = Request("a watercolor fox", steps=3, size=(32, 32), seed=2, scheduler=scheduler, latents=latents)
    result, reference = run_both(ours["sdxl"], theirs["sdxl"], monkeypatch, request, latents)
    assert psnr(result.images[0], reference[0]) >= PSNR_DB


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_without_guidance_non_square_and_negative_prompt(ours, theirs, monkeypatch, arch):
    latents = seeded_noise(5)((2, 4, 12, 20))
    for guidance, negative in ((1.0, None), (6.0, "blurry")):
        request = Request("a red chair", negative_prompt=negative, steps=3, guidance=guidance, size=(40, 24),
                          num_images=2, seed=4, scheduler="euler", latents=latents)
        result, reference = run_both(ours[arch], theirs[arch], monkeypatch, request, latents)
        assert result.size == (40, 24) and len(result.images) == 2
        for mine, ref in zip(result.images, reference):
            assert mine.size == (40, 24)
            assert psnr(mine, ref) >= PSNR_DB


@pytest.mark.parametrize("arch,scheduler", [("sd15", "ddim"), ("sd15", "euler-a"), ("sdxl", "euler")])
def test_img2img_matches_diffusers(ours, theirs, monkeypatch, arch, scheduler):
    request = Request("a lake at sunset", steps=5, seed=9, scheduler=scheduler, image=picture(48, 32), strength=0.6)
    result, reference = run_both(ours[arch], theirs[arch], monkeypatch, request, img2img=True)
    assert result.size == (48, 32)
    assert result.steps == 5 and result.evaluations == 3  # int(5 * 0.6) of the 5 steps run
    assert psnr(result.images[0], reference[0]) >= PSNR_DB


def test_default_noise_is_reproducible_and_the_seed_matters(ours):
    run = lambda seed: np.asarray(ours["sd15"].generate(Request("a cat", steps=2, size=(32, 32), seed=seed)).images[0])
    assert np.array_equal(run(11), run(11))
    assert not np.array_equal(run(11), run(12))


def test_fp16_variant_loads_close_to_fp32(sd15, ours):
    half = load_pipeline(str(sd15), variant="fp16")
    request = Request("a cat", steps=2, size=(32, 32), seed=0)
    a = np.asarray(ours["sd15"].generate(request).images[0], dtype=np.float64)
    b = np.asarray(half.generate(request).images[0], dtype=np.float64)
    assert np.abs(a - b).max() <= 8  # half-precision weights, computed in float32


# --- the command ---------------------------------------------------------------------------------


def test_generate_writes_a_png_with_its_settings(cli, sd15, tmp_path):
    out = tmp_path / "cat.png"
    result = cli("generate", str(sd15), "a cat on a chair", "-o", str(out), "--steps", "2", "--size", "32x24",
                 "--seed", "5", "--scheduler", "euler", "--negative-prompt", "blurry", "--json")
    record = json_of(result)
    assert record["files"] == [str(out)] and record["seed"] == 5 and record["steps"] == 2
    assert record["scheduler"] == "euler" and record["size"] == "32x24" and record["guidance"] == 7.5
    assert len(record["timings"]["steps_s"]) == 2 and record["timings"]["total_s"] > 0
    with Image.open(out) as png:
        assert png.size == (32, 24)
        meta = png.text
    assert meta["prompt"] == "a cat on a chair" and meta["negative_prompt"] == "blurry"
    assert meta["seed"] == "5" and meta["steps"] == "2" and meta["scheduler"] == "euler"
    assert meta["size"] == "32x24" and meta["model"] == str(sd15) and meta["guidance"] == "7.5"
    assert "Seed: 5" in meta["parameters"]


def test_generate_several_images_and_latents_file(cli, sd15, tmp_path):
    latents = tmp_path / "noise.npy"
    np.save(latents, seeded_noise(1)((2, 4, 16, 16)))
    out = tmp_path / "img.png"
    result = cli("generate", str(sd15), "a fox", "-o", str(out), "--steps", "1", "--size", "32x32", "-n", "2",
                 "--latents", str(latents))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / "img-1.png"), str(tmp_path / "img-2.png")]
    assert not out.exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--size", "30x32"], "multiple of 8"),
        (["--image", "missing.png"], "missing.png"),
        (["--latents", "nothing.npy"], "nothing.npy"),
        (["--strength", "0.01", "--image", "IMAGE"], "strength"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(cli, sd15, tmp_path, args, message):
    image = tmp_path / "in.png"
    Image.new("RGB", (32, 32), "white").save(image)
    args = [str(image) if a == "IMAGE" else a for a in args]
    size = [] if "--size" in args else ["--size", "32x32"]
    result = cli("generate", str(sd15), "a cat", "-o", str(tmp_path / "out.png"), "--steps", "2", *size, *args)
    assert message in error_line(result)
    assert list(tmp_path.glob("*.png")) == [image]


def test_a_folder_missing_a_component_is_named(cli, tmp_path):
    import shutil

    folder = write_sd15(tmp_path / "broken")
    shutil.rmtree(folder / "vae")
    result = cli("generate", str(folder), "a cat", "-o", str(tmp_path / "x.png"))
    assert "vae" in error_line(result) and not (tmp_path / "x.png").exists()


def test_a_vlm_is_not_a_text_to_image_model(cli):
    result = cli("generate", "internvl2-1b", "a cat")
    assert "not a text-to-image" in error_line(result)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_single_file_checkpoint_makes_the_same_image_as_the_folder(cli, sd15, sdxl, ours, tmp_path, arch):
    from single_file_ref import write_single_file

    folder = {"sd15": sd15, "sdxl": sdxl}[arch]
    single = write_single_file(folder, tmp_path / "model.safetensors")
    request = Request("a cat", steps=2, size=(32, 32), seed=3, scheduler="euler")
    expected = np.asarray(ours[arch].generate(request).images[0])
    out = tmp_path / "single.png"
    result = cli("generate", str(single), "a cat", "--config", str(folder), "-o", str(out), "--steps", "2",
                 "--size", "32x32", "--seed", "3", "--scheduler", "euler")
    assert result.exit_code == 0, result.stderr
    with Image.open(out) as png:  # same weights; the CLI's thread setup may round a pixel differently
        assert np.abs(np.asarray(png.convert("RGB"), dtype=int) - expected).max() <= 1


def test_single_file_without_configs_names_the_download(cli, sd15, tmp_path):
    from single_file_ref import write_single_file

    single = write_single_file(sd15, tmp_path / "model.safetensors")
    result = cli("generate", str(single), "a cat", "-o", str(tmp_path / "x.png"))
    assert "mix download stable-diffusion-v1-5" in error_line(result)
