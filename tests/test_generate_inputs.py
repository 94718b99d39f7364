"""`mix generate`'s inputs: the output path is checked before any model loads, bad option values are
usage errors (exit 2), and img2img takes an image of any size, resized as diffusers' VaeImageProcessor."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from PIL import Image

from helpers import error_line, json_of, picture
from sd_ref import write_sd15

from mixcli.diffusion import pipeline as sd_pipeline
from mixcli.diffusion.pipeline import image_size, preprocess_image


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return write_sd15(tmp_path_factory.mktemp("sd15") / "pipe")


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """The models `mix generate` tried to load (none get loaded: the fake refuses)."""
    calls: list[str] = []

    def refuse(name, **_):
        calls.append(name)
        raise RuntimeError("the model was loaded")

    monkeypatch.setattr(sd_pipeline, "load_pipeline", refuse)
    return calls


# --- the output path ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing folder", "does not exist"),
        ("file as folder", "is not a folder"),
        ("read-only folder", "not writable"),
        ("existing output", "exists (pass --force"),
        ("existing batch output", "exists (pass --force"),
        ("folder as output", "is a folder"),
    ],
)
def test_the_output_is_checked_before_loading(cli, tmp_path, monkeypatch, loads, case, message):
    out, args = tmp_path / "out.png", []
    if case == "missing folder":
        out = tmp_path / "no" / "such" / "out.png"
    elif case == "file as folder":
        (tmp_path / "notes").write_text("a file")
        out = tmp_path / "notes" / "out.png"
    elif case == "read-only folder":  # tests run as root here, where chmod does not stop writes
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real(p, mode))
    elif case == "existing output":
        out.write_bytes(b"precious")
    elif case == "existing batch output":
        (tmp_path / "out-2.png").write_bytes(b"precious")
        args = ["-n", "2"]
    else:
        out.mkdir()
    result = cli("generate", "some-model", "a cat", "-o", str(out), *args)
    assert message in error_line(result)
    assert loads == []
    assert not (tmp_path / "out-1.png").exists()
    if case.startswith("existing"):
        assert b"precious" in {p.read_bytes() for p in tmp_path.glob("out*.png")}


def test_force_overwrites_an_existing_output(cli, sd15, tmp_path):
    out = tmp_path / "cat.png"
    out.write_bytes(b"old")
    record = json_of(cli("generate", str(sd15), "a cat", "-o", str(out), "--steps", "1", "--size", "32x32", "--force", "--json"))
    assert record["files"] == [str(out)]
    with Image.open(out) as png:
        assert png.size == (32, 32)


def test_the_default_output_is_named_in_the_help(cli):
    result = cli("generate", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split()).replace("- ", "-")  # the help wraps after hyphens
    assert "mix-SEED.png in the current folder" in text and "--force" in text


def test_without_o_the_file_lands_in_the_current_folder(cli, sd15, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record = json_of(cli("generate", str(sd15), "a cat", "--steps", "1", "--size", "32x32", "--seed", "8", "--json"))
    assert record["files"] == ["mix-8.png"] and (tmp_path / "mix-8.png").is_file()


# --- usage errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,option",
    [
        (["--steps", "0"], "--steps"),
        (["--steps", "-3"], "--steps"),
        (["--scheduler", "foo"], "--scheduler"),
        (["--strength", "2"], "--strength"),
        (["--strength", "0"], "--strength"),
        (["--dtype", "float64"], "--dtype"),
        (["--size", "big"], "--size"),
    ],
)
def test_bad_option_values_are_usage_errors(cli, tmp_path, loads, args, option):
    result = cli("generate", "some-model", "a cat", "-o", str(tmp_path / "out.png"), *args)
    assert result.exit_code == 2, result.stderr
    assert option in result.stderr and "Traceback" not in result.stderr
    assert loads == [] and not list(tmp_path.glob("*.png"))


def test_the_scheduler_error_lists_the_names(cli, tmp_path):
    result = cli("generate", "some-model", "a cat", "--scheduler", "heun")
    assert result.exit_code == 2
    assert "dpm++2m-karras" in " ".join(result.stderr.split())


# --- img2img of any size -----------------------------------------------------------------------


@pytest.mark.parametrize("factor", [8, 2])
@pytest.mark.parametrize("size", [(37, 29), (64, 48), (101, 8), (513, 250)])
def test_img2img_preprocessing_matches_diffusers(factor, size):
    import torch
    from diffusers.image_processor import VaeImageProcessor

    image = picture(*size, seed=size[0])
    expected = VaeImageProcessor(vae_scale_factor=factor).preprocess(image)
    width, height = image_size(image, factor)
    assert (width % factor, height % factor) == (0, 0) and 0 <= size[0] - width < factor and 0 <= size[1] - height < factor
    ours = preprocess_image(image, width, height)
    assert ours.dtype == np.float32 and ours.shape == tuple(expected.shape)
    assert torch.equal(torch.from_numpy(ours), expected)  # bit for bit


def test_an_image_smaller_than_the_latent_cell_is_refused():
    with pytest.raises(sd_pipeline.InputError, match="smaller than"):
        image_size(picture(7, 30), 8)


def test_cli_img2img_takes_an_odd_sized_image(cli, sd15, tmp_path):
    source = tmp_path / "odd.png"
    picture(37, 29).save(source)
    out = tmp_path / "out.png"
    record = json_of(cli("generate", str(sd15), "a lake", "--image", str(source), "-o", str(out), "--steps", "2", "--json"))
    factor = 2  # the tiny VAE's 2 ** (blocks - 1)
    assert record["size"] == f"{37 - 37 % factor}x{29 - 29 % factor}" == "36x28"
    with Image.open(out) as png:
        assert png.size == (36, 28)
    assert re.fullmatch(r"\d+", str(record["model_evaluations"]))
