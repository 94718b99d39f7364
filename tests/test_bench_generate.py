"""`mix bench generate` on a tiny SD1.5 pipeline: the report's shape, one UNet time per step and run, the
records of `mix generate` (scheduler, guidance, size, model evaluations), an unusable device; --compare
diffusers from the same noise (PSNR), and --random-weights from the shipped SD1.5 configuration."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import error_line, json_of
from sd_ref import write_sd15

from mixcli.bench import random_weights
from mixcli.bench.generate import psnr
from mixcli.bench.random_pipeline import component_shapes
from mixcli.bench.report import summary_lines, table_rows

PSNR_DB = 35.0
SD15 = random_weights.CONFIGS / "stable-diffusion-v1-5"

SUMMARY = {"p50", "p90", "p99", "mean"}
PROMPT = "a watercolor fox in the snow"


@pytest.fixture(autouse=True)
def plain_paddle(monkeypatch):
    monkeypatch.setenv("MIX_EXT", "0")  # no fused-op build in each test's fresh cache


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return write_sd15(tmp_path_factory.mktemp("bench-sd") / "sd15")


def test_report_shape_and_the_settings_generate_records(cli, sd15):
    report = json_of(cli("bench", "generate", str(sd15), "--steps", "2", "--size", "64x64", "--runs", "2",
                         "--warmup", "1", "--scheduler", "euler", "--json"))  # fmt: skip
    assert (report["task"], report["device"], report["dtype"]) == ("generate", "cpu", "float32")
    m, settings = report["metrics"], report["settings"]
    assert all(set(m[key]) == SUMMARY for key in ("step_s", "vae_decode_s", "e2e_s"))
    assert m["images"] == 2 and 0 < m["images_per_s"] <= 1 / m["e2e_s"]["p50"] * 1.5
    assert m["step_s"]["mean"] * 2 + m["vae_decode_s"]["mean"] <= m["e2e_s"]["mean"] * 1.001
    generated = json_of(cli("generate", str(sd15), "a fox", "--steps", "2", "--size", "64x64", "--scheduler", "euler",
                            "-o", str(sd15.parent / "fox.png"), "--json"))  # fmt: skip
    assert (settings["scheduler"], settings["guidance"], settings["size"], settings["model_evaluations"]) == (
        generated["scheduler"], generated["guidance"], generated["size"], generated["model_evaluations"])


def test_table_lists_the_step_and_the_decode(cli, sd15):
    result = cli("bench", "generate", str(sd15), "--steps", "1", "--size", "64x64", "--runs", "1", "--warmup", "0")
    assert result.exit_code == 0, result.stderr
    assert "UNet step (s)" in result.stdout and "VAE decode (s)" in result.stdout and "images/s" in result.stdout


def test_usage_and_device_errors(cli, sd15):
    assert cli("bench", "generate", str(sd15), "--scheduler", "foo").exit_code == 2
    assert cli("bench", "generate", str(sd15), "--size", "big").exit_code == 2
    assert "npu:0" in error_line(cli("bench", "generate", str(sd15), "--device", "npu:0"))


def _compare(cli, model: str, *extra: str) -> dict:
    return json_of(cli("bench", "generate", model, "--steps", "2", "--size", "64x64", "--runs", "1", "--warmup", "0",
                       "--compare", "diffusers", "--json", *extra))  # fmt: skip


def test_compare_diffusers_from_the_same_noise(cli, sd15):
    report = _compare(cli, str(sd15), "--scheduler", "ddim")
    mine, ref = report["metrics"], report["reference"]
    assert (ref["stack"], ref["device"], set(ref["versions"])) == ("diffusers", "cpu", {"torch", "diffusers"})
    assert set(ref["metrics"]["step_s"]) == SUMMARY and ref["metrics"]["images"] == 1
    assert ref["metrics"]["step_s"]["mean"] * 2 + ref["metrics"]["vae_decode_s"]["mean"] <= ref["metrics"]["e2e_s"]["mean"]
    for key in ("step_s", "vae_decode_s", "e2e_s"):
        assert report["ratio"][key] == pytest.approx(ref["metrics"][key]["p50"] / mine[key]["p50"], abs=6e-4)
    assert report["ratio"]["images_per_s"] == pytest.approx(mine["images_per_s"] / ref["metrics"]["images_per_s"], abs=6e-4)
    assert report["agreement"]["psnr_db"] >= PSNR_DB
    step = next(row for row in table_rows(report) if row["metric"] == "UNet step (s)")
    assert (step["reference"], step["speedup"]) == (f"{ref['metrics']['step_s']['p50']:g}", f"{report['ratio']['step_s']:g}")
    assert f"PSNR {report['agreement']['psnr_db']} dB" in summary_lines(report)[-1]


def test_psnr_tells_other_noise_apart(sd15):
    """Without the shared initial noise the two sides' images would be this far apart: the threshold above
    holds only because diffusers was given mix's latents."""
    from mixcli.diffusion.pipeline import Request, load_pipeline

    pipe = load_pipeline(str(sd15))
    draw = lambda seed: np.asarray(pipe.generate(Request(PROMPT, steps=2, size=(64, 64), seed=seed)).images[0])
    assert psnr(draw(0), draw(0)) == 100.0
    assert psnr(draw(0), draw(1)) < 25.0


@pytest.mark.parametrize(
    "component,module,params",
    [("unet", "UNet2DConditionModel", 859_520_964), ("vae", "AutoencoderKL", 83_653_863),
     ("text_encoder", "CLIPTextModel", 123_060_480)],
)  # fmt: skip
def test_shipped_sd15_configs_lay_out_the_authors_tensors(component, module, params):
    """The random checkpoint's names and shapes are those of diffusers' and transformers' own modules for
    the shipped configs (built on torch's meta device: nothing allocated), at SD1.5's published sizes."""
    import torch

    config = json.loads((SD15 / component / "config.json").read_text())
    with torch.device("meta"):
        if component == "text_encoder":
            from transformers import CLIPTextConfig, CLIPTextModel

            reference = CLIPTextModel(CLIPTextConfig(**config))
        else:
            import diffusers

            reference = getattr(diffusers, module).from_config(config)
    theirs = {name: tuple(t.shape) for name, t in reference.state_dict().items()}
    if component == "text_encoder":  # the published file has transformers 4's names; 5 drops the prefix on load
        theirs = {f"text_model.{name}": shape for name, shape in theirs.items()}
    mine = component_shapes(component, config)
    assert mine == theirs
    assert sum(int(np.prod(s)) for s in mine.values()) == params


@pytest.fixture
def tiny_sd15(tmp_path, monkeypatch):
    """The shipped stable-diffusion-v1-5 configuration with tiny widths, in place of the real one."""
    root = tmp_path / "configs"
    shutil.copytree(SD15, root / SD15.name)

    def shrink(name: str, **values) -> None:
        path = root / SD15.name / name / "config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | values))

    shrink("unet", block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
           up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=32, sample_size=8)  # fmt: skip
    shrink("vae", block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
           up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1)  # fmt: skip
    shrink("text_encoder", hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    monkeypatch.setattr(random_weights, "CONFIGS", root)
    return root


def test_random_weights_run_on_both_sides_written_once(cli, tiny_sd15, mix_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    first = cli("bench", "generate", "stable-diffusion-v1-5", "--random-weights", "--steps", "2", "--runs", "1",
                "--warmup", "0", "--compare", "diffusers", "--json")  # fmt: skip
    report = json_of(first)
    assert "writing random weights for stable-diffusion-v1-5 once" in first.stderr and " GB in " in first.stderr
    assert (report["model"], report["random_weights"]) == ("stable-diffusion-v1-5", True)
    assert report["settings"]["size"] == "16x16"  # the tiny UNet's sample_size 8 times the VAE's factor 2
    assert report["agreement"]["psnr_db"] >= PSNR_DB
    folder = mix_home / "bench" / "random" / "stable-diffusion-v1-5"
    assert json.loads((folder / "text_encoder" / "config.json").read_text())["vocab_size"] == 49408
    vocab = json.loads((folder / "tokenizer" / "vocab.json").read_text())
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"], len(vocab)) == (49406, 49407, 49408)
    again = cli("bench", "generate", "stable-diffusion-v1-5", "--random-weights", "--steps", "1", "--runs", "1",
                "--warmup", "0")  # fmt: skip
    assert again.exit_code == 0, again.stderr
    assert "writing random weights" not in again.stderr


def test_random_weights_check_the_free_disk_first(cli, tiny_sd15, mix_home, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12, 10**6))
    line = error_line(cli("bench", "generate", "stable-diffusion-v1-5", "--random-weights", "--steps", "1"))
    assert "random weights need" in line and "MIX_HOME" in line
    assert not (mix_home / "bench" / "random" / "stable-diffusion-v1-5").exists()


def test_random_weights_know_only_pipelines_here(cli):
    line = error_line(cli("bench", "generate", "internvl2-1b", "--random-weights"))
    assert "it has: stable-diffusion-v1-5" in line
