"""Shared fixtures: an isolated MIX_HOME and a CLI runner that keeps stdout and stderr apart."""

from __future__ import annotations

import pytest
from torchvision_cpu import declare_missing_ops
from typer.testing import CliRunner

declare_missing_ops()  # before transformers or open_clip import torchvision (see torchvision_cpu)


@pytest.fixture(autouse=True)
def mix_home(tmp_path, monkeypatch):
    """Every test gets its own empty cache and no network hub."""
    home = tmp_path / "mix_home"
    monkeypatch.setenv("MIX_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("MIX_DEBUG", raising=False)
    monkeypatch.delenv("MIX_ALLOW_PICKLE", raising=False)
    return home


@pytest.fixture
def cli():
    """Run `mix ARGS...` in-process; returns the click Result (stdout, stderr, exit_code)."""
    from mixcli.cli.app import app

    runner = CliRunner()

    def run(*args: str, input: str | None = None):
        return runner.invoke(app, list(args), input=input)

    return run
