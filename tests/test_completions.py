"""The committed shell completions match what the app generates, carry no local paths, and complete."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

COMPLETIONS = Path(__file__).resolve().parents[1] / "completions"


@pytest.fixture(scope="module")
def generate():
    spec = importlib.util.spec_from_file_location("completions_generate", COMPLETIONS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered(generate) -> dict[str, str]:
    return generate.render_all()


def test_committed_scripts_are_current(rendered):
    stale = [name for name, text in rendered.items() if (COMPLETIONS / name).read_text() != text]
    assert not stale, f"completions {stale} are stale: run `python completions/generate.py`"


def test_scripts_embed_no_machine_paths(rendered):
    local = [str(Path.home()), sys.prefix, sys.executable, os.getcwd(), str(COMPLETIONS.parent)]
    for name, text in rendered.items():
        assert not [p for p in local if p in text], name
        assert "_MIX_COMPLETE=complete_" in text and " mix" in text, name
    assert rendered["_mix"].startswith("#compdef mix\n")


def test_check_mode_reports_stale_files(generate, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(generate, "HERE", tmp_path)
    assert generate.main(["--check"]) == 1
    assert "completions/mix.bash is stale; run: python completions/generate.py" in capsys.readouterr().err
    assert generate.main([]) == 0
    assert generate.main(["--check"]) == 0


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_script_completes_registered_commands():
    mix = Path(sys.executable).parent / "mix"
    if not mix.exists():
        pytest.skip("the mix entry point is not installed beside this Python")
    complete = "COMP_WORDS=(mix check); COMP_CWORD=1; _mix_completion mix; echo ${COMPREPLY[@]}"
    script = f"source {COMPLETIONS / 'mix.bash'}; {complete}"
    env = {**os.environ, "PATH": f"{mix.parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["check-env"]


def test_app_completes_options():
    from typer.testing import CliRunner

    from mixcli.cli.app import app

    env = {"_MIX_COMPLETE": "complete_bash", "COMP_WORDS": "mix check-env --j", "COMP_CWORD": "2"}
    result = CliRunner().invoke(app, [], env=env, prog_name="mix")
    assert result.stdout.split() == ["--json"]


def _complete(words: str) -> list[str]:
    from typer.testing import CliRunner

    from mixcli.cli.app import app

    env = {"_MIX_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
    return CliRunner().invoke(app, [], env=env, prog_name="mix").stdout.split()


@pytest.mark.parametrize("words, expected", [
    ("mix datacopilot convert x.jsonl --to o", ["openai"]),
    ("mix datacopilot merge a.jsonl --to l", ["llava"]),
    ("mix generate m p --scheduler dpm", ["dpm++2m", "dpm++2m-karras"]),
    ("mix infer m --dtype b", ["bfloat16"]),
    ("mix chat m --dtype f", ["float16", "float32"]),
    ("mix infer m --device c", ["cpu"]),
    ("mix infer internvl2-", None),
])
def test_values_complete(words, expected):
    got = _complete(words)
    if expected is None:  # model aliases from models.toml
        assert "internvl2-1b" in got and all(g.startswith("internvl2-") for g in got), got
    else:
        assert sorted(got) == expected, got
