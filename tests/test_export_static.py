"""`mix export --format paddle` of a Stable Diffusion pipeline: each component a static graph checked at
export; `mix generate OUT` runs the export with Paddle Inference through the pipeline's own loop and
makes the dynamic pipeline's image (PSNR >= 40 dB, SD1.5 and SDXL); a graph that disagrees with the dynamic model, a
component that does not convert, an existing output and an unknown format are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from helpers import error_line, json_of
from sd_ref import write_sd15

PSNR_DB = 40.0
GENERATE = ("a red cube on a table", "--steps", "3", "--seed", "7", "--guidance", "5", "--json")


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return write_sd15(tmp_path_factory.mktemp("sd15") / "pipe")


@pytest.fixture(scope="module")
def exported(sd15, tmp_path_factory):
    from typer.testing import CliRunner

    from mixcli.cli.app import app

    out = tmp_path_factory.mktemp("sd15-static") / "graphs"
    result = CliRunner().invoke(app, ["export", str(sd15), "-o", str(out), "--format", "paddle", "--json"])
    return out, json_of(result), result.stderr


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_manifest_lists_every_component_and_its_files(exported):
    out, record, stderr = exported
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "paddle" and manifest["kind"] == "diffusion" and manifest["mix_version"]
    assert list(manifest["components"]) == ["text_encoder", "unet", "vae_decoder", "vae_encoder"] == record["components"]
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == written == sorted(record["files"])
    unet = manifest["components"]["unet"]
    assert [t["role"] for t in unet["inputs"]] == ["sample", "timestep", "encoder_hidden_states"]
    assert unet["inputs"][0]["shape"] == [1, 4, 16, 16] and unet["inputs"][0]["dtype"] == "float32"
    assert manifest["settings"]["size"] == [32, 32]
    for name, part in manifest["components"].items():
        assert 0 <= part["max_abs_diff"] <= 1e-4 * part["output_scale"], name
        assert f"{name}: checked, largest difference" in stderr


def test_manifest_names_are_the_graphs_names(exported):
    from mixcli.export.graphs import Predictor

    out, _, _ = exported
    for part in json.loads((out / "manifest.json").read_text())["components"].values():
        predictor = Predictor(out / part["files"][0].removesuffix(".json"), "cpu")
        assert predictor.input_names == [t["name"] for t in part["inputs"]]
        assert predictor.output_names == [t["name"] for t in part["outputs"]]


def test_generate_runs_the_export_as_the_dynamic_pipeline(cli, sd15, exported, tmp_path):
    out, _, _ = exported
    dynamic = json_of(cli("generate", str(sd15), *GENERATE, "-o", str(tmp_path / "dynamic.png")))
    static = json_of(cli("generate", str(out), *GENERATE, "-o", str(tmp_path / "static.png")))
    assert static["size"] == dynamic["size"] == "32x32" and static["scheduler"] == dynamic["scheduler"]
    a, b = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("dynamic", "static"))
    assert a.std() > 10  # a picture, not a flat field
    assert psnr(a, b) >= PSNR_DB


def test_img2img_runs_the_exported_vae_encoder(sd15, exported):
    from mixcli.diffusion.pipeline import Request, load_pipeline
    from mixcli.export.diffusion import sample_picture

    out, _, _ = exported
    request = Request("a blue ball", steps=4, seed=3, image=sample_picture(32, 32), strength=0.6)
    a, b = (np.asarray(load_pipeline(str(p)).generate(request).images[0]) for p in (sd15, out))
    assert psnr(a, b) >= PSNR_DB


def test_other_sizes_are_refused_naming_the_export_size(cli, exported, tmp_path):
    out, _, _ = exported
    line = error_line(cli("generate", str(out), "x", "--steps", "1", "--size", "64x32", "-o", str(tmp_path / "a.png")))
    assert "(1, 4, 16, 16)" in line and "--size" in line


def test_existing_output_is_refused_without_force(cli, sd15, exported):
    out, _, _ = exported
    before = (out / "manifest.json").read_bytes()
    line = error_line(cli("export", str(sd15), "-o", str(out), "--format", "paddle"))
    assert "already holds files" in line and "--force" in line
    assert (out / "manifest.json").read_bytes() == before


def test_unknown_format_is_a_usage_error(cli, sd15, tmp_path):
    result = cli("export", str(sd15), "-o", str(tmp_path / "x"), "--format", "tflite")
    assert result.exit_code == 2 and "tflite" in result.stderr and "paddle" in result.stderr
    assert not (tmp_path / "x").exists()


def test_a_graph_that_disagrees_fails_naming_the_component_and_keeps_nothing(cli, sd15, tmp_path, monkeypatch):
    from mixcli.export import diffusion
    from mixcli.runtime import is_tracing

    decode = diffusion.VAEDecoderGraph.forward

    def traced_differently(self, latents):  # the traced graph adds 0.01: a stand-in for a wrong conversion
        return decode(self, latents) + (0.01 if is_tracing() else 0.0)

    monkeypatch.setattr(diffusion.VAEDecoderGraph, "forward", traced_differently)
    line = error_line(cli("export", str(sd15), "-o", str(tmp_path / "out"), "--format", "paddle"))
    assert "vae_decoder" in line and "differs from the dynamic model by 0.01" in line
    assert list(tmp_path.iterdir()) == []  # no output, no staging folder


def test_a_component_that_does_not_convert_is_named_with_the_operator(tmp_path):
    import paddle

    from mixcli.errors import MixError
    from mixcli.export.graphs import Component, export_static

    class HostRoundTrip(paddle.nn.Layer):
        def forward(self, x):
            return paddle.to_tensor(np.sort(x.numpy()))  # a NumPy step: nothing to trace

    component = Component("sorter", HostRoundTrip(), ["x"], ["y"], [np.ones((2, 3), np.float32)])
    with pytest.raises(MixError, match=r"^sorter does not convert to a static graph: .*numpy"):
        export_static(component, tmp_path, "sorter/model")


def test_sdxl_export_runs_as_the_dynamic_pipeline(tmp_path):
    from sd_ref import write_sdxl

    from mixcli.diffusion.pipeline import Request, load_pipeline
    from mixcli.export.graphs import export_graphs

    source = write_sdxl(tmp_path / "sdxl")
    manifest = export_graphs(str(source), tmp_path / "out", "paddle").manifest
    assert list(manifest["components"]) == ["text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder"]
    roles = [t["role"] for t in manifest["components"]["unet"]["inputs"]]
    assert roles == ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    request = Request("a green hill", steps=3, seed=2, guidance=5.0)
    a, b = (np.asarray(load_pipeline(str(p)).generate(request).images[0]) for p in (source, tmp_path / "out"))
    assert a.std() > 10 and psnr(a, b) >= PSNR_DB
