"""`mix check-env`: the report, its problems and fixes, and the exit code when Paddle is unusable."""

from __future__ import annotations

import sys

import paddle
import pytest

from helpers import json_of
from mixcli import envcheck, runtime


def problems(report: dict, level: str | None = None) -> list[dict]:
    return [p for p in report["problems"] if level is None or p["level"] == level]


def test_json_is_one_document_naming_the_cpu_build(cli, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_very_secret")
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.com")
    result = cli("check-env", "--json")
    report = json_of(result)
    assert report["ok"] is True
    assert report["paddle"]["build"] == "cpu" and report["paddle"]["version"] == paddle.__version__
    assert report["paddle"]["devices"] == [{"name": "cpu", "ok": True}]
    assert report["python"]["executable"] == sys.executable
    assert report["packages"]["paddlepaddle"] and report["packages"]["paddlepaddle-gpu"] is None
    assert report["hub"] == {"endpoint": "https://hf-mirror.com", "endpoint_set": True, "token_set": True}
    assert "hf_very_secret" not in result.stdout + result.stderr
    assert report["cache"]["path"].endswith("mix_home") and report["cache"]["free_bytes"] > 0
    assert set(report["threads"]) >= {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "paddle", "cores"}
    assert all(p["problem"] and p["fix"] for p in report["problems"])
    assert not problems(report, "error")


def test_human_output_is_a_table_with_the_fixes(cli, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    result = cli("check-env")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert f"{paddle.__version__} (cpu build" in out
    assert "device cpu" in out and "ok" in out
    assert "token not set" in out
    assert "note: compiled ext ops are not built" in out and "fix: nothing to do" in out


def test_both_paddle_builds_installed_is_an_error(cli, monkeypatch):
    real = envcheck.package_version
    monkeypatch.setattr(envcheck, "package_version", lambda name: "3.3.1" if name == "paddlepaddle-gpu" else real(name))
    report = envcheck.collect()
    [error] = problems(report, "error")
    assert "paddlepaddle and paddlepaddle-gpu are installed together" in error["problem"]
    assert error["fix"].startswith("pip uninstall -y paddlepaddle paddlepaddle-gpu")
    assert report["ok"] is False
    result = cli("check-env")
    assert result.exit_code == 1
    assert "error: paddlepaddle and paddlepaddle-gpu are installed together" in result.stderr


def test_paddle_missing_exits_1(cli, monkeypatch):
    monkeypatch.setattr(runtime, "_paddle", None)
    monkeypatch.setitem(sys.modules, "paddle", None)  # makes `import paddle` raise ImportError
    result = cli("check-env", "--json")
    report = json_of(result, code=1)
    assert report["ok"] is False and report["paddle"] is None and report["threads"]["paddle"] is None
    assert "PaddlePaddle is not installed" in problems(report, "error")[0]["problem"]
    assert "error: PaddlePaddle is not installed" in result.stderr
    human = cli("check-env")
    assert human.exit_code == 1 and "missing or broken" in human.stdout


def test_tiny_op_reports_a_device_that_fails():
    assert envcheck.tiny_op(paddle, "cpu") is None
    assert envcheck.tiny_op(paddle, "gpu:0")  # a CPU build cannot run on a GPU
    assert paddle.get_device() == "cpu"


def test_single_thread_setting_is_flagged(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(envcheck, "cpu_threads", lambda: 8)
    found: list[envcheck.Problem] = []
    threads = envcheck.check_threads(True, found)
    assert threads["OMP_NUM_THREADS"] == "1" and threads["paddle"] == 1 and threads["cores"] == 8
    assert "runs on one thread" in found[0].problem and "set it to 8" in found[0].fix


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_freed_tensor_memory_is_kept_for_reuse_on_glibc():
    import platform

    assert runtime.keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
