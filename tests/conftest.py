"""Shared fixtures: an isolated MIX_HOME and a CLI runner that keeps stdout and stderr apart."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

# PyPI's torchvision beside the CPU torch, in this process and the ones the tests start (see site/torchvision_cpu.py).
SITE = str(Path(__file__).parent / "site")
sys.path.insert(0, SITE)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [SITE, os.environ.get("PYTHONPATH")]))
import torchvision_cpu  # noqa: E402

torchvision_cpu.install()


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


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """The ext ops built once for the session in their own cache ($MIX_EXT_DIR), or the build this process
    already loaded (ops register with Paddle once per process). None on a machine without a C++ compiler:
    the equivalence tests then run the fallback through the same functions."""
    from mixcli import ext
    from mixcli.ext import build, ops
    from mixcli.runtime import import_paddle

    if build.toolchain(import_paddle()).cxx is None:
        yield None
        return
    with pytest.MonkeyPatch.context() as mp:
        if ops._library is None:
            mp.setenv("MIX_EXT_DIR", str(tmp_path_factory.mktemp("ext-cache")))
            ext.reset()
        mp.delenv("MIX_EXT", raising=False)
        library = ext.library()
    assert library is not None, ext.failure()
    yield library
