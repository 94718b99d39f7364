"""`mix generate`'s PNG settings reproduce its image: read a PNG's recorded keys (or its AUTOMATIC1111
`parameters` line), run `mix generate` with them, get the same pixels, for every scheduler."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import json_of, picture
from sd_ref import write_sd15, write_sdxl

from mixcli.diffusion.schedulers import SCHEDULER_NAMES

# The PNG key of each `mix generate` option that a recorded run passes back.
FLAGS = {
    "steps": "--steps", "seed": "--seed", "guidance": "--guidance", "scheduler": "--scheduler", "size": "--size",
    "negative_prompt": "--negative-prompt", "strength": "--strength", "dtype": "--dtype", "num_images": "-n",
}  # fmt: skip
# The same, from the `parameters` line ("Steps: 2, Sampler: pndm, ...").
PARAMETERS = {
    "Steps": "--steps", "Sampler": "--scheduler", "CFG scale": "--guidance", "Seed": "--seed", "Size": "--size",
    "Denoising strength": "--strength", "Batch size": "-n",
}  # fmt: skip


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return write_sd15(tmp_path_factory.mktemp("sd15") / "pipe")


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return write_sdxl(tmp_path_factory.mktemp("sdxl") / "pipe")


def read_png(path) -> tuple[dict[str, str], np.ndarray]:
    with Image.open(path) as png:
        return dict(png.text), np.asarray(png.convert("RGB"))


def args_from_keys(meta: dict[str, str]) -> list[str]:
    """model, prompt and options of a rerun, from the PNG's individual keys."""
    args = [meta["model"], meta["prompt"]]
    for key, flag in FLAGS.items():
        if key in meta:
            args += [flag, meta[key]]
    for lora in meta["loras"].split("\n") if "loras" in meta else []:  # one adapter a line
        args += ["--lora", lora]
    return args


def parse_parameters(text: str) -> tuple[str, str | None, dict[str, str]]:
    """(prompt, negative prompt, settings) of an AUTOMATIC1111 parameters line."""
    *lines, settings = text.split("\n")
    negative = None
    if lines[-1].startswith("Negative prompt: "):
        negative = lines.pop()[len("Negative prompt: ") :]
    return "\n".join(lines), negative, dict(item.split(": ", 1) for item in settings.split(", "))


def args_from_parameters(text: str) -> list[str]:
    prompt, negative, settings = parse_parameters(text)
    args = [settings["Model"], prompt, *(["--negative-prompt", negative] if negative is not None else [])]
    for key, flag in PARAMETERS.items():
        if key in settings:
            args += [flag, settings[key]]
    for item in text.rsplit("\n", 1)[-1].split(", "):  # a "Lora: PATH:WEIGHT" item per adapter
        if item.startswith("Lora: "):
            args += ["--lora", item[len("Lora: ") :]]
    return args


def assert_reproduced(cli, png, tmp_path, extra: list[str] = (), index: int | None = None) -> dict[str, str]:
    """The PNG's keys and its parameters line each give back its pixels bit for bit."""
    meta, pixels = read_png(png)
    for name, args in [("keys", args_from_keys(meta)), ("parameters", args_from_parameters(meta["parameters"]))]:
        out = tmp_path / f"{name}.png"
        json_of(cli("generate", *args, *extra, "-o", str(out), "--json"))
        if index is not None:  # image k of a batch: the rerun writes NAME-k.png
            out = out.with_name(f"{out.stem}-{index}{out.suffix}")
        again = read_png(out)[1]
        assert np.array_equal(again, pixels), f"the {name} did not reproduce {png.name}: {args}"
    return meta


@pytest.mark.parametrize("scheduler", [None, *SCHEDULER_NAMES])  # None: the checkpoint's, PNDM for SD1.5
def test_recorded_settings_reproduce_the_image(cli, sd15, tmp_path, scheduler):
    png = tmp_path / "first.png"
    chosen = [] if scheduler is None else ["--scheduler", scheduler]
    record = json_of(cli("generate", str(sd15), "a red chair", "-o", str(png), "--steps", "2", "--seed", "7",
                         "--size", "32x24", "--guidance", "7.123456789", *chosen, "--json"))  # fmt: skip
    assert record["steps"] == 2 and record["scheduler"] == (scheduler or "pndm")
    meta = assert_reproduced(cli, png, tmp_path)
    assert meta["steps"] == "2" and "Steps: 2," in meta["parameters"]
    assert meta["guidance"] == "7.123456789" and meta["scheduler"] == record["scheduler"]
    # PNDM runs its second step twice: three UNet passes for two steps, recorded apart.
    assert int(meta["model_evaluations"]) == record["model_evaluations"] == (3 if record["scheduler"] == "pndm" else 2)
    assert len(record["timings"]["steps_s"]) == record["model_evaluations"]


def test_parameters_line_agrees_with_the_keys(cli, sd15, tmp_path):
    png = tmp_path / "cat.png"
    json_of(cli("generate", str(sd15), "a cat", "-o", str(png), "--steps", "3", "--seed", "11", "--size", "24x32",
                "--negative-prompt", "blurry", "--json"))  # fmt: skip
    meta, _ = read_png(png)
    prompt, negative, settings = parse_parameters(meta["parameters"])
    assert (prompt, negative) == (meta["prompt"], meta["negative_prompt"]) == ("a cat", "blurry")
    assert settings["Steps"] == meta["steps"] == "3" and settings["Sampler"] == meta["scheduler"] == "pndm"
    assert settings["Seed"] == meta["seed"] == "11" and settings["Size"] == meta["size"] == "24x32"
    assert settings["CFG scale"] == meta["guidance"] == "7.5" and settings["Model"] == meta["model"]


def test_sdxl_without_a_negative_prompt_reproduces(cli, sdxl, tmp_path):
    # SDXL zeroes an absent negative prompt but encodes an empty one: the PNG must not turn one into the other.
    png = tmp_path / "xl.png"
    json_of(cli("generate", str(sdxl), "a lighthouse", "-o", str(png), "--steps", "2", "--seed", "3",
                "--size", "32x32", "--json"))  # fmt: skip
    meta = assert_reproduced(cli, png, tmp_path)
    assert "negative_prompt" not in meta and "Negative prompt" not in meta["parameters"]


def test_img2img_records_the_requested_steps(cli, sd15, tmp_path):
    source = tmp_path / "source.png"
    picture(40, 24).save(source)
    png = tmp_path / "img2img.png"
    record = json_of(cli("generate", str(sd15), "a lake", "-o", str(png), "--image", str(source), "--steps", "5",
                         "--strength", "0.6", "--seed", "2", "--json"))  # fmt: skip
    assert record["steps"] == 5 and record["model_evaluations"] == 4  # PNDM's 6 timesteps from the third
    meta = assert_reproduced(cli, png, tmp_path, extra=["--image", str(source)])
    assert meta["steps"] == "5" and meta["strength"] == "0.6" and "Denoising strength: 0.6" in meta["parameters"]


def test_the_second_image_of_a_batch_reproduces(cli, sd15, tmp_path):
    out = tmp_path / "batch.png"
    json_of(cli("generate", str(sd15), "a fox", "-o", str(out), "-n", "2", "--steps", "2", "--seed", "4",
                "--size", "32x32", "--json"))  # fmt: skip
    second = tmp_path / "batch-2.png"
    meta = assert_reproduced(cli, second, tmp_path, index=2)
    assert meta["num_images"] == "2" and meta["image_index"] == "2" and "Batch pos: 1" in meta["parameters"]


def test_loras_are_recorded_and_reproduce(cli, sd15, tmp_path):
    from sd_lora_ref import to_kohya, write_lora

    first = write_lora(sd15, tmp_path / "style", seed=1)
    second = to_kohya(first, tmp_path / "kohya.safetensors", sd15=True)
    png = tmp_path / "adapted.png"
    record = json_of(cli("generate", str(sd15), "a red chair", "-o", str(png), "--steps", "2", "--seed", "5",
                         "--size", "32x32", "--lora", f"{first.parent}:0.123456789", "--lora", f"{second}:-0.5",
                         "--json"))  # fmt: skip
    assert [lora["weight"] for lora in record["loras"]] == [0.123456789, -0.5]
    meta = assert_reproduced(cli, png, tmp_path)
    assert meta["loras"] == f"{first.parent}:0.123456789\n{second}:-0.5"
    plain = tmp_path / "plain.png"
    json_of(cli("generate", str(sd15), "a red chair", "-o", str(plain), "--steps", "2", "--seed", "5", "--size", "32x32",
                "--json"))  # fmt: skip
    assert not np.array_equal(read_png(plain)[1], read_png(png)[1])  # the adapters are part of what is reproduced
