"""ControlNet: the model against diffusers' ControlNetModel, `generate` with a ControlNet against diffusers'
StableDiffusion(XL)ControlNet(Img2Img)Pipeline on tiny random pipelines whose ControlNet visibly changes the
image, the control image's preprocessing (resize, Canny), and the command's options, record and errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from controlnet_ref import reference_controlnet_pipeline, write_controlnet
from helpers import error_line, json_of, picture
from sd_ref import reference_pipeline, write_sd15, write_sdxl
from test_generate import PSNR_DB, Recorder, diffusers_scheduler, psnr

from mixcli.diffusion.canny import canny, canny_edges
from mixcli.diffusion.control import Control, control_pixels
from mixcli.diffusion.controlnet import load_controlnet
from mixcli.diffusion.pipeline import Request, load_pipeline, seeded_noise

VISIBLE_DB = 25.0  # an image with the ControlNet and one without differ by more than this
WINDOWED_DB = 45.0  # the same for a ControlNet that skips the first steps (--control-start > 0)


@pytest.fixture(scope="module", autouse=True)
def torch_on_one_thread():
    """diffusers on tiny models: with two threads on a busy 2-core machine torch ran 3 steps in 20-30 s, 1.5 s on one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("controlnet")
    sd15, sdxl = write_sd15(root / "sd15"), write_sdxl(root / "sdxl")
    nets = {
        "sd15": write_controlnet(sd15, root / "cn15"),
        "sdxl": write_controlnet(sdxl, root / "cnxl", seed=1),
        # channel order flipped, and a shuffle-style ControlNet (global pooling, diffusers' guess mode)
        "sd15-bgr": write_controlnet(sd15, root / "cn15bgr", seed=2, controlnet_conditioning_channel_order="bgr"),
        "sd15-pool": _pooled(write_controlnet(sd15, root / "cn15pool", seed=3)),
    }
    return {"sd15": sd15, "sdxl": sdxl, "nets": nets}


def _pooled(folder):
    import json

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "global_pool_conditions": True}))
    return folder


@pytest.fixture(scope="module")
def ours(folders):
    return {arch: load_pipeline(str(folders[arch])) for arch in ("sd15", "sdxl")}


@pytest.fixture(scope="module")
def bases(folders):
    return {arch: reference_pipeline(folders[arch]) for arch in ("sd15", "sdxl")}


def generate_both(ours, base, net_folder, monkeypatch, request: Request, img2img: bool = False, ref_image=None):
    """Our image and diffusers' for the same request and noise (``ref_image``: the control image diffusers gets)."""
    import torch

    ours.controlnet = load_controlnet(str(net_folder), ours)
    noise = Recorder(request.seed)
    result = ours.generate(request, noise=noise)
    pipe = reference_controlnet_pipeline(base, net_folder, img2img=img2img)
    if request.scheduler:
        pipe.scheduler = diffusers_scheduler(base.scheduler, request.scheduler)
    noise.patch(monkeypatch)
    control = request.control
    width, height = result.size
    kwargs = dict(
        prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
        guidance_scale=result.guidance, num_images_per_prompt=request.num_images, output_type="np",
        controlnet_conditioning_scale=control.scale, control_guidance_start=control.start,
        control_guidance_end=control.end, height=height, width=width,
    )  # fmt: skip
    control_image = ref_image or control.image
    if img2img:
        kwargs.update(image=request.image, control_image=control_image, strength=request.strength)
    else:
        kwargs.update(image=control_image, latents=None if request.latents is None else torch.from_numpy(request.latents))
    images = pipe(**kwargs).images
    return result, (images * 255).round().astype(np.uint8)


def without_control(ours, request: Request) -> np.ndarray:
    from dataclasses import replace

    return np.asarray(ours.generate(replace(request, control=None)).images[0])


CASES = {
    "sd15-pndm": ("sd15", "sd15", dict(scheduler=None), dict(scale=0.7)),
    "sd15-window": ("sd15", "sd15", dict(scheduler="euler", size=(40, 24), num_images=2, negative_prompt="blurry",
                                         steps=5), dict(scale=1.5, start=0.2, end=0.8)),  # fmt: skip
    "sd15-no-guidance": ("sd15", "sd15", dict(scheduler="ddim", guidance=1.0), dict(scale=1.0)),
    "sd15-bgr": ("sd15", "sd15-bgr", dict(scheduler="euler-a"), dict(scale=1.0)),
    "sd15-pooled": ("sd15", "sd15-pool", dict(scheduler="euler"), dict(scale=2.0)),
    "sdxl-euler": ("sdxl", "sdxl", dict(scheduler=None), dict(scale=0.9, end=0.6)),
    "sdxl-dpm": ("sdxl", "sdxl", dict(scheduler="dpm++2m", negative_prompt="dark"), dict(scale=1.1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_generate_with_controlnet_matches_diffusers(folders, ours, bases, monkeypatch, case):
    arch, net, settings, control = CASES[case]
    settings = {"steps": 3, "size": (32, 32), **settings}
    width, height = settings["size"]
    latents = seeded_noise(4)((settings.get("num_images", 1), 4, height // 2, width // 2))
    request = Request("a house by a lake", seed=5, latents=latents, control=Control(picture(48, 40, seed=1), **control),
                      **settings)  # fmt: skip
    result, reference = generate_both(ours[arch], bases[arch], folders["nets"][net], monkeypatch, request)
    assert len(result.images) == len(reference) == settings.get("num_images", 1)
    for mine, ref in zip(result.images, reference):
        assert mine.size == (width, height)
        assert psnr(mine, ref) >= PSNR_DB
    # The ControlNet shows plainly when it acts from the first step; left out of the first ones, less so.
    limit = VISIBLE_DB if request.control.start == 0.0 else WINDOWED_DB
    assert psnr(result.images[0], without_control(ours[arch], request)) < limit


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_img2img_with_controlnet_matches_diffusers(folders, ours, bases, monkeypatch, arch):
    request = Request("a lake at sunset", steps=4, seed=9, scheduler="ddim", image=picture(32, 24, seed=3), strength=0.7,
                      control=Control(picture(32, 24, seed=4), scale=1.2))  # fmt: skip
    result, reference = generate_both(ours[arch], bases[arch], folders["nets"][arch], monkeypatch, request, img2img=True)
    assert result.size == (32, 24) and result.evaluations == 2
    assert psnr(result.images[0], reference[0]) >= PSNR_DB
    assert psnr(result.images[0], without_control(ours[arch], request)) < VISIBLE_DB


def test_the_control_image_sets_the_default_size(folders, ours):
    ours["sd15"].controlnet = load_controlnet(str(folders["nets"]["sd15"]), ours["sd15"])
    result = ours["sd15"].generate(Request("a cat", steps=1, control=Control(picture(41, 27))))
    assert result.size == (40, 26)  # rounded down to the VAE's factor, as diffusers' pipeline does


def test_the_control_image_changes_the_picture(folders, ours):
    pipe = ours["sd15"]
    pipe.controlnet = load_controlnet(str(folders["nets"]["sd15"]), pipe)
    run = lambda image: pipe.generate(Request("a cat", steps=2, size=(32, 32), seed=1, control=Control(image))).images[0]
    assert psnr(run(picture(32, 32, seed=1)), np.asarray(run(picture(32, 32, seed=2)))) < VISIBLE_DB


# --- the model alone ---------------------------------------------------------------------------


@pytest.mark.parametrize("net", ["sd15", "sdxl", "sd15-bgr", "sd15-pool"])
def test_controlnet_residuals_match_diffusers(folders, ours, net):
    import paddle
    import torch
    from diffusers import ControlNetModel

    folder = folders["nets"][net]
    pipe = ours["sdxl" if net == "sdxl" else "sd15"]
    mine = load_controlnet(str(folder), pipe)
    ref = ControlNetModel.from_pretrained(str(folder)).eval()
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, 4, 12, 16), dtype=np.float32)
    context = rng.standard_normal((2, 7, ref.config.cross_attention_dim), dtype=np.float32)
    image = rng.random((1, 3, 24, 32), dtype=np.float32)
    extra = {}
    if ref.config.addition_embed_type == "text_time":
        extra = {"text_embeds": rng.standard_normal((2, 32), dtype=np.float32),
                 "time_ids": np.tile(np.array([[24, 32, 0, 0, 24, 32]], np.float32), (2, 1))}  # fmt: skip
    with paddle.no_grad():
        condition = mine.embed_condition(paddle.to_tensor(image))
        down, mid = mine(paddle.to_tensor(sample), 501.0, paddle.to_tensor(context), condition, scale=0.8,
                         **{k: paddle.to_tensor(v) for k, v in extra.items()})  # fmt: skip
    with torch.no_grad():
        added = {k: torch.from_numpy(v) for k, v in extra.items()} or None
        expected = ref(torch.from_numpy(sample), 501.0, torch.from_numpy(context), torch.from_numpy(image).repeat(2, 1, 1, 1),
                       conditioning_scale=0.8, added_cond_kwargs=added, return_dict=False)  # fmt: skip
    for got, want in zip([*down, mid], [*expected[0], expected[1]], strict=True):
        want = want.numpy()
        assert got.shape == list(want.shape)
        assert np.abs(got.numpy() - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


# --- the control image -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
@pytest.mark.parametrize("source,size", [((48, 40), (32, 32)), ((20, 30), (64, 40)), ((32, 24), (32, 24))])
def test_control_pixels_match_diffusers(mode, source, size):
    import torch  # noqa: F401  (diffusers' image processor returns torch tensors)
    from diffusers.image_processor import VaeImageProcessor

    image = picture(*source).convert(mode)
    if mode == "RGBA":
        image.putalpha(Image.fromarray(np.asarray(picture(*source, seed=5))[:, :, 0]))
    processor = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True, do_normalize=False)  # the pipelines' own
    expected = processor.preprocess(image, height=size[1], width=size[0]).numpy()
    got = control_pixels(image, *size)
    assert got.dtype == np.float32 and got.shape == expected.shape == (1, 3, size[1], size[0])
    assert np.array_equal(got, expected)


def square(side: int = 32, top_left: int = 10, width: int = 10, grey: int = 0) -> np.ndarray:
    pixels = np.full((side, side), grey, np.uint8)
    pixels[top_left : top_left + width, top_left : top_left + width] = 255
    return pixels


def test_canny_outlines_a_square_one_pixel_wide():
    edges = canny_edges(square(), 100, 200)  # white rows and columns 10..19
    # cv2.Canny keeps the first of two equal neighbours: the left and top edges fall just outside the square,
    # the right and bottom ones on its last column and row.
    for line in range(12, 18):
        assert list(np.nonzero(edges[line])[0]) == [9, 19] and list(np.nonzero(edges[:, line])[0]) == [9, 19]
    rows, cols = np.nonzero(edges)
    assert rows.min() == cols.min() == 9 and rows.max() == cols.max() == 19 and not edges[11:19, 11:19].any()
    assert not (edges[:-1, :-1] & edges[1:, :-1] & edges[:-1, 1:] & edges[1:, 1:]).any()  # one pixel wide


def test_canny_thresholds():
    assert not canny_edges(np.full((16, 16), 128, np.uint8), 1, 2).any()  # flat: no gradient
    # A step of 15 levels: |dx| + |dy| is 60 along the sides, 90 at the corners.
    faint = square(grey=240)
    assert canny_edges(faint, 30, 89).sum() == canny_edges(faint, 30, 59).sum() > 30  # the corners start the outline
    assert not canny_edges(faint, 30, 90).any()  # nothing above the upper threshold: no edge at all
    assert canny_edges(faint, 60, 60).sum() == 4  # the sides are not above the lower one: the corners alone
    photo = np.asarray(picture(40, 40, seed=2).resize((80, 80), Image.BICUBIC))
    loose, strict = canny_edges(photo, 50, 100), canny_edges(photo, 150, 300)
    assert strict.sum() < loose.sum() and not (strict & ~loose).any()
    assert np.array_equal(canny_edges(photo, 300, 150), strict)  # swapped as cv2 swaps them


def test_canny_hysteresis_follows_weak_edges_from_strong_ones():
    image = Image.new("L", (40, 20), 0)
    draw = ImageDraw.Draw(image)
    draw.rectangle([5, 5, 15, 14], fill=200)  # strong: step 200
    draw.rectangle([16, 5, 34, 14], fill=60)  # weak (60), touching the strong one
    draw.rectangle([5, 17, 34, 19], fill=60)  # weak and alone
    edges = canny_edges(np.asarray(image), 100, 400)
    assert edges[4:16, 4:17].any() and edges[4:16, 17:36].any()  # the weak box is reached from the strong one
    assert not edges[17:, :].any()  # the lone weak bar is not


def test_canny_image_is_white_edges_on_black():
    edges = canny(Image.fromarray(square()).convert("RGB"))
    pixels = np.asarray(edges)
    assert edges.mode == "RGB" and set(np.unique(pixels)) == {0, 255}
    assert np.array_equal(pixels[:, :, 0] == 255, canny_edges(square(), 100, 200))


def test_canny_preprocessing_matches_diffusers_fed_the_edge_map(folders, ours, bases, monkeypatch):
    photo = picture(24, 20, seed=6).resize((72, 60), Image.BICUBIC)
    control = Control(photo, preprocess="canny", canny_low=60, canny_high=150)
    request = Request("a cat", steps=2, size=(32, 32), seed=3, scheduler="euler", control=control)
    edge_map = canny(photo.resize((32, 32), Image.LANCZOS), 60, 150)  # edges at the output size
    assert np.asarray(edge_map).any()
    result, reference = generate_both(ours["sd15"], bases["sd15"], folders["nets"]["sd15"], monkeypatch, request,
                                      ref_image=edge_map)  # fmt: skip
    assert psnr(result.images[0], reference[0]) >= PSNR_DB


# --- the command ---------------------------------------------------------------------------------


def test_generate_with_controlnet_records_and_reproduces(cli, folders, tmp_path):
    source = tmp_path / "photo.png"
    picture(24, 20, seed=6).resize((64, 48), Image.BICUBIC).save(source)
    out = tmp_path / "controlled.png"
    args = ["--controlnet", str(folders["nets"]["sd15"]), "--control-image", str(source)]
    record = json_of(cli("generate", str(folders["sd15"]), "a cat", "-o", str(out), "--steps", "3", "--seed", "4",
                         "--size", "32x24", "--control-scale", "0.75", "--control-start", "0.2", "--control-end", "0.9",
                         "--control-preprocess", "canny", "--canny-low", "40", *args, "--json"))  # fmt: skip
    assert record["controlnet"] == {"model": str(folders["nets"]["sd15"]), "image": str(source), "scale": 0.75,
                                    "start": 0.2, "end": 0.9, "preprocess": "canny", "canny_low": 40, "canny_high": 200}  # fmt: skip
    with Image.open(out) as png:
        meta, pixels = dict(png.text), np.asarray(png.convert("RGB"))
    assert meta["controlnet"] == str(folders["nets"]["sd15"]) and meta["control_image"] == str(source)
    assert (meta["control_scale"], meta["control_start"], meta["control_end"]) == ("0.75", "0.2", "0.9")
    assert (meta["control_preprocess"], meta["canny_low"], meta["canny_high"]) == ("canny", "40", "200")
    assert 'ControlNet 0: "Module: canny, Model: ' in meta["parameters"] and "Weight: 0.75" in meta["parameters"]
    flags = {"steps": "--steps", "seed": "--seed", "size": "--size", "guidance": "--guidance", "scheduler": "--scheduler",
             "controlnet": "--controlnet", "control_image": "--control-image", "control_scale": "--control-scale",
             "control_start": "--control-start", "control_end": "--control-end",
             "control_preprocess": "--control-preprocess", "canny_low": "--canny-low", "canny_high": "--canny-high"}  # fmt: skip
    again = tmp_path / "again.png"
    rerun = [arg for key, flag in flags.items() for arg in (flag, meta[key])]
    assert cli("generate", meta["model"], meta["prompt"], *rerun, "-o", str(again)).exit_code == 0
    with Image.open(again) as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), pixels)


def test_without_a_controlnet_the_record_says_none(cli, folders, tmp_path):
    out = tmp_path / "plain.png"
    record = json_of(cli("generate", str(folders["sd15"]), "a cat", "-o", str(out), "--steps", "1", "--size", "16x16",
                         "--json"))  # fmt: skip
    assert record["controlnet"] is None
    with Image.open(out) as png:
        assert not any(key.startswith(("control", "canny")) for key in png.text)
        assert "ControlNet" not in png.text["parameters"]


@pytest.mark.parametrize(
    "net,image,message",
    [
        ("sd15", "missing.png", "missing.png"),
        ("sdxl", "IMAGE", "is a ControlNet for SDXL, the model is SD1.5"),
        ("UNET", "IMAGE", "holds a UNet2DConditionModel model, not a ControlNetModel"),
        ("PIPELINE", "IMAGE", "is a pipeline"),
        ("controlnet-canny", "IMAGE", "mix download controlnet-canny"),
        ("stable-diffusion-v1-5", "IMAGE", "not a ControlNet"),
    ],
)
def test_bad_controlnet_input_is_one_line(cli, folders, tmp_path, net, image, message):
    source = tmp_path / "in.png"
    picture(32, 32).save(source)
    names = {"UNET": str(folders["sd15"] / "unet"), "PIPELINE": str(folders["sd15"])}
    net = names.get(net) or str(folders["nets"].get(net, net))
    result = cli("generate", str(folders["sd15"]), "a cat", "-o", str(tmp_path / "out.png"), "--steps", "1",
                 "--controlnet", net, "--control-image", str(source) if image == "IMAGE" else image)  # fmt: skip
    assert message in error_line(result)
    assert not (tmp_path / "out.png").exists()


def test_start_after_end_is_refused(cli, folders, tmp_path):
    source = tmp_path / "in.png"
    picture(32, 32).save(source)
    result = cli("generate", str(folders["sd15"]), "a cat", "--controlnet", str(folders["nets"]["sd15"]),
                 "--control-image", str(source), "--control-start", "0.8", "--control-end", "0.5")  # fmt: skip
    assert "--control-start 0.8 and --control-end 0.5" in error_line(result)


@pytest.mark.parametrize(
    "args,option",
    [
        (["--control-image", "x.png"], "--controlnet"),
        (["--controlnet", "controlnet-canny"], "--control-image"),
        (["--controlnet", "c", "--control-image", "x.png", "--control-preprocess", "sobel"], "--control-preprocess"),
        (["--controlnet", "c", "--control-image", "x.png", "--canny-low", "50"], "--control-preprocess"),
        (["--controlnet", "c", "--control-image", "x.png", "--control-end", "1.5"], "--control-end"),
    ],
)
def test_controlnet_usage_errors(cli, tmp_path, args, option):
    result = cli("generate", "some-model", "a cat", "-o", str(tmp_path / "out.png"), *args)
    assert result.exit_code == 2, result.stderr
    assert option in result.stderr and "Traceback" not in result.stderr
