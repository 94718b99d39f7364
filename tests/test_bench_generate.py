"""`mix bench generate` on a tiny SD1.5 pipeline: the report's shape, one UNet time per step and run, the
records of `mix generate` (scheduler, guidance, size, model evaluations), and an unusable device."""

from __future__ import annotations

import pytest

from helpers import error_line, json_of
from sd_ref import write_sd15

SUMMARY = {"p50", "p90", "p99", "mean"}


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
