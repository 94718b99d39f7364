"""DataCopilot outputs written to another folder keep image paths that resolve (issue 14).

Relative image paths mean "relative to the dataset file"; every command that writes rows rewrites them for
the output's folder, or makes them absolute with --absolute-paths. URLs and absolute paths stay as they are.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest

from helpers import json_of, picture
from mixcli.datacopilot import MMDataset, detect
from mixcli.datacopilot.schema import to_canonical

REPO = Path(__file__).resolve().parent.parent


def _row(i, image, question="<image>\nWhat is this?"):
    row = {"id": i, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": f"answer {i}"}]}
    if image is not None:
        row["image"] = image
    return row


@pytest.fixture
def data(tmp_path):
    """data/d.jsonl with images in data/img/, a URL, an absolute path and a text-only row."""
    folder = tmp_path / "data"
    (folder / "img").mkdir(parents=True)
    picture(40, 30).save(folder / "img" / "a.png")
    picture(30, 40, seed=1).save(folder / "img" / "b.png")
    picture(20, 20, seed=2).save(tmp_path / "elsewhere.png")
    rows = [_row(0, "img/a.png"), _row(1, "img/b.png"), _row(2, "https://h/x.png"),
            _row(3, str(tmp_path / "elsewhere.png")), _row(4, None, "Hi")]
    path = folder / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _images(path):
    return [img for row in MMDataset.open(path) for img in to_canonical(row)["images"]]


def _resolves(path):
    """Every local image of ``path`` exists, taken relative to the file's folder."""
    local = [i for i in _images(path) if not i.startswith("https://")]
    return bool(local) and all((path.parent / i).is_file() for i in local)


def test_relocator_rewrites_only_relative_paths(tmp_path):
    from mixcli.datacopilot.relocate import Relocator

    root = tmp_path / "in"
    relocate = Relocator(tmp_path / "out" / "o.jsonl")
    assert relocate.path("img/a.png", root) == os.path.join("..", "in", "img", "a.png")
    for ref in ("https://h/x.png", "data:image/png;base64,AAAA", "/abs/x.png", "~/x.png", ""):
        assert relocate.path(ref, root) == ref
    row = _row(0, "a.png")
    assert relocate(row, tmp_path / "out") is row  # the same folder: nothing to rewrite
    assert relocate(row, None) is row  # rows made in memory have no folder
    absolute = Relocator(tmp_path / "out" / "o.jsonl", absolute=True)
    assert absolute.path("img/a.png", root) == str(root / "img" / "a.png")


@pytest.mark.parametrize("command", [
    ["validate", "{data}", "-o", "{out}"],
    ["convert", "{data}", "--to", "openai", "-o", "{out}"],
    ["convert", "{data}", "--to", "mix", "-o", "{out}"],
    ["filter", "{data}", "--max-turns", "9", "-o", "{out}"],
    ["sample", "{data}", "-n", "5", "--seed", "0", "-o", "{out}"],
    ["merge", "{data}", "-o", "{out}"],
    ["dedup", "{data}", "-o", "{out}"],
])
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_every_writing_command_keeps_images_resolvable(data, cli, tmp_path, command, suffix):
    out = tmp_path / "elsewhere" / "deeper" / f"o{suffix}"
    out.parent.mkdir(parents=True)
    args = [a.format(data=data, out=out) for a in command]
    r = cli("datacopilot", *args)
    assert r.exit_code == 0, r.stderr
    assert _resolves(out)
    images = _images(out)
    assert "https://h/x.png" in images and str(tmp_path / "elsewhere.png") in images
    assert all(not Path(i).is_absolute() for i in images if "elsewhere.png" not in i and "://" not in i)
    assert cli("datacopilot", "validate", str(out), "--check-images", "exists").exit_code == 0


def test_validate_rejects_keep_resolvable_paths(data, cli, tmp_path):
    (data.parent / "img" / "b.png").unlink()
    out, rejects = tmp_path / "o" / "good.jsonl", tmp_path / "r" / "bad.jsonl"
    r = cli("datacopilot", "validate", str(data), "-o", str(out), "--rejects", str(rejects))
    assert r.exit_code == 1
    assert _resolves(out)
    bad = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [b["row"] for b in bad] == [2] and bad[0]["data"]["image"] == "../data/img/b.png"


def test_split_keeps_images_resolvable(data, cli, tmp_path):
    outs = [tmp_path / "train" / "t.jsonl", tmp_path / "val" / "v.json"]
    r = cli("datacopilot", "split", str(data), "--ratios", "0.6,0.4", "--seed", "1", "-o", str(outs[0]),
            "-o", str(outs[1]), "--allow-empty")
    assert r.exit_code == 0, r.stderr
    local = [i for o in outs for i in _images(o) if "://" not in i]
    assert len(local) == 3 and all(
        (o.parent / i).is_file() for o in outs for i in _images(o) if "://" not in i)


def test_merge_of_datasets_from_different_folders(data, cli, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    picture(16, 16, seed=3).save(other / "c.png")
    (other / "o.json").write_text(json.dumps([{"messages": [
        {"role": "user",
         "content": [{"type": "image_url", "image_url": {"url": "c.png"}}, {"type": "text", "text": "Q"}]},
        {"role": "assistant", "content": "A"}]}]))
    for extra in ([], ["--to", "llava"]):
        out = tmp_path / "merged" / f"m{len(extra)}.jsonl"
        r = cli("datacopilot", "merge", str(data), str(other / "o.json"), "-o", str(out), *extra)
        assert r.exit_code == 0, r.stderr
        assert _resolves(out)
        assert "../other/c.png" in _images(out) and "../data/img/a.png" in _images(out)


def test_absolute_paths_flag(data, cli, tmp_path):
    out = tmp_path / "abs" / "o.jsonl"
    r = cli("datacopilot", "convert", str(data), "--to", "llava", "-o", str(out), "--absolute-paths")
    assert r.exit_code == 0, r.stderr
    images = _images(out)
    assert str(data.parent / "img" / "a.png") in images and "https://h/x.png" in images
    # an output beside the input is rewritten too with the flag, and left alone without it
    beside = data.parent / "beside.jsonl"
    assert cli("datacopilot", "sample", str(data), "-n", "9", "-o", str(beside), "--absolute-paths").exit_code == 0
    assert str(data.parent / "img" / "b.png") in _images(beside)
    assert cli("datacopilot", "sample", str(data), "-n", "9", "-o", str(beside), "--force").exit_code == 0
    assert "img/b.png" in _images(beside)


def test_image_root_is_where_paths_start(data, cli, tmp_path):
    moved = tmp_path / "rows.jsonl"
    shutil.copy(data, moved)  # the rows' paths are relative to data/, not to the file's new folder
    out = tmp_path / "out" / "o.jsonl"
    r = cli("datacopilot", "validate", str(moved), "--image-root", str(data.parent), "-o", str(out))
    assert r.exit_code == 0, r.stderr
    assert _resolves(out)


def test_library_export_rewrites_paths(data, tmp_path):
    out = tmp_path / "x" / "o.jsonl"
    assert MMDataset.open(data).head(2).export(out) == 2
    assert _images(out) == ["../data/img/a.png", "../data/img/b.png"]
    assert all(detect(r) == "llava" for r in MMDataset.open(out))


def _readme_datacopilot_commands() -> list[str]:
    lines = (REPO / "README.md").read_text().splitlines()
    # The walk-through works offline; lines that need a downloaded model (--model ALIAS) are not part of it.
    return [line.split("#")[0].strip() for line in lines if line.startswith("mix datacopilot ") and "--model" not in line]


def test_readme_walk_through_ends_with_resolvable_images(tmp_path, cli, monkeypatch):
    """The README's datacopilot lines, run as written from the repository root, keep every image."""
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    commands = _readme_datacopilot_commands()
    assert commands and not any("--image-root" in c for c in commands)
    for i, command in enumerate(commands):
        r = cli(*shlex.split(command)[1:])
        assert r.exit_code == (1 if i == 0 else 0), (command, r.stdout, r.stderr)  # the first one finds 2 bad rows
    written = [Path(a) for c in commands for flag, a in zip(shlex.split(c), shlex.split(c)[1:])
               if flag == "-o" and a.endswith("l")]
    assert written
    for path in written:
        assert _resolves(path), path
        assert cli("datacopilot", "validate", str(path)).exit_code == 0, path
    stats = json_of(cli("datacopilot", "stats", str(written[-1]), "--json"))
    assert stats["images_unreadable"] == 0 and stats["image_width"]["count"] == stats["rows"]
