"""models.toml and MODEL argument resolution."""

from __future__ import annotations

import pytest

from mixcli.errors import UnknownModelError
from mixcli.registry import get_spec, load_registry, resolve_model

SEED_ALIASES = [
    "internvl2-1b", "internvl2-2b", "internvl2-8b",
    "internvl2_5-1b", "internvl2_5-2b", "internvl2_5-4b", "internvl2_5-8b",
    "qwen2-vl-2b", "qwen2-vl-7b", "qwen2_5-vl-3b", "qwen2_5-vl-7b",
    "pp-docbee-2b", "llava-1.5-7b", "llava-onevision-0.5b",
    "stable-diffusion-v1-5", "sdxl-base-1.0", "ppocr-v4",
]


def test_registry_has_the_seed_checkpoints():
    registry = load_registry()
    for alias in SEED_ALIASES:
        spec = registry[alias]
        assert spec.repo.count("/") == 1 and spec.family and spec.task and spec.license


def test_unknown_alias_names_the_closest():
    with pytest.raises(UnknownModelError, match="internvl2-1b"):
        get_spec("internvl2-1")


def test_resolve_alias_repo_and_directory(tmp_path):
    assert resolve_model("internvl2-1b").repo == "OpenGVLab/InternVL2-1B"
    ref = resolve_model("someone/some-model")
    assert ref.repo == "someone/some-model" and ref.spec is None
    assert resolve_model("OpenGVLab/InternVL2-1B").spec.alias == "internvl2-1b"
    assert resolve_model(str(tmp_path)).local_dir == tmp_path


def test_resolve_missing_path_is_an_error(tmp_path):
    with pytest.raises(UnknownModelError, match="not a model directory"):
        resolve_model(str(tmp_path / "nope" / "deeper"))


def test_cli_version_and_help(cli):
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.startswith("mix ")
    assert cli("--help").exit_code == 0
    assert cli("no-such-command").exit_code == 2


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    import os

    from mixcli.paths import atomic_write

    with atomic_write(tmp_path / "out.txt") as f:
        f.write(b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o666 & ~mask
