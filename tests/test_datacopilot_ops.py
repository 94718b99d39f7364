"""DataCopilot filter, sample, split and merge on generated datasets and images."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from helpers import json_of
from mixcli.datacopilot import MMDataset
from mixcli.datacopilot import ops


def _row(i, image=None, text="What is shown?", turns=1):
    conv = []
    for t in range(turns):
        conv += [{"from": "human", "value": ("<image>\n" if image and t == 0 else "") + text},
                 {"from": "gpt", "value": f"answer {i}"}]
    row = {"id": i, "conversations": conv}
    if image:
        row["image"] = image
    return row


@pytest.fixture
def data(tmp_path):
    """Images of different sizes and rows using them, with varied text lengths and turn counts."""
    sizes = {"wide.png": (200, 50), "square.png": (64, 64), "tall.png": (30, 120)}
    for name, size in sizes.items():
        Image.new("RGB", size, (10, 200, 30)).save(tmp_path / name)
    rows = [_row(0, "wide.png"), _row(1, "square.png", turns=2), _row(2, "tall.png", text="x" * 300),
            _row(3, None, turns=3), _row(4, "missing.png"), _row(5, "https://h/x.png")]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{bad\n")
    return path


def _ids(path):
    return [r["id"] for r in MMDataset.open(path)]


@pytest.mark.parametrize("cond, ids", [
    ({"min_turns": 4}, [1, 3]),
    ({"max_turns": 2}, [0, 2, 4, 5]),
    ({"min_chars": 200}, [2]),
    ({"min_width": 60}, [0, 1, 3]),
    ({"max_height": 64}, [0, 1, 3]),
    ({"min_aspect": 2.0}, [0, 3]),
    ({"max_aspect": 0.5}, [2, 3]),
    ({"min_width": 60, "min_turns": 4}, [1, 3]),
    ({"max_file_size": 10}, [3]),
])
def test_filter_conditions(data, cond, ids):
    pred = ops.RowFilter(ops.Conditions(**cond), data.parent)
    assert [r["id"] for r in MMDataset.open(data).filter(pred)] == ids


def _tokenizer_dir(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[UNK]": 0, "What": 1, "is": 2, "shown": 3, "?": 4}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_filter_cli_with_tokens(data, cli, tmp_path):
    out = tmp_path / "f.jsonl"
    r = cli("datacopilot", "filter", str(data), "-o", str(out), "--max-tokens", "6",
            "--tokenizer", str(_tokenizer_dir(tmp_path)), "--json")
    assert json_of(r)["rows"] == 4
    # "What is shown ?" + "answer N" = 4 + 2 tokens per exchange; 300 x-es are one unknown token
    assert _ids(out) == [0, 2, 4, 5]
    r = cli("datacopilot", "filter", str(data), "-o", str(tmp_path / "w.jsonl"), "--max-tokens", "6", "--workers", "2",
            "--min-width", "60", "--tokenizer", str(_tokenizer_dir(tmp_path)))
    assert r.exit_code == 0, r.stderr
    assert _ids(tmp_path / "w.jsonl") == [0]
    r = cli("datacopilot", "filter", str(data), "-o", str(tmp_path / "g.jsonl"), "--min-tokens", "3")
    assert r.exit_code == 1 and "--tokenizer" in r.stderr


def test_sample_cli(data, cli, tmp_path):
    r = cli("datacopilot", "sample", str(data), "-n", "3", "--seed", "7", "-o", str(tmp_path / "s.jsonl"))
    assert r.exit_code == 0, r.stderr
    first = _ids(tmp_path / "s.jsonl")
    cli("datacopilot", "sample", str(data), "-n", "3", "--seed", "7", "-o", str(tmp_path / "s2.jsonl"))
    assert len(first) == 3 and first == sorted(first) == _ids(tmp_path / "s2.jsonl")


def test_split_exact_and_seeded(data, cli, tmp_path):
    outs = [tmp_path / "train.jsonl", tmp_path / "val.parquet"]
    r = cli("datacopilot", "split", str(data), "--ratios", "0.5,0.5", "--seed", "1",
            "-o", str(outs[0]), "-o", str(outs[1]), "--json")
    assert [p["rows"] for p in json_of(r)["parts"]] == [3, 3]
    a, b = _ids(outs[0]), _ids(outs[1])
    assert sorted(a + b) == list(range(6))
    assert ops.split_assignment(10, [0.9, 0.1], 3) == ops.split_assignment(10, [0.9, 0.1], 3)
    assert sorted(ops.split_assignment(10, [0.7, 0.3], 3)) == [0] * 7 + [1] * 3
    r = cli("datacopilot", "split", str(data), "--ratios", "0.9", "-o", str(tmp_path / "x.jsonl"))
    assert r.exit_code == 2 and "ratios" in r.stderr


def test_merge_cli(data, cli, tmp_path):
    other = tmp_path / "o.json"
    other.write_text(json.dumps([{"messages": [{"role": "user", "content": "Hi"},
                                               {"role": "assistant", "content": "Yo"}]}]))
    out = tmp_path / "m.jsonl"
    r = cli("datacopilot", "merge", str(data), str(other), "-o", str(out), "--to", "mix", "--json")
    assert r.exit_code == 0, r.stderr
    rows = list(MMDataset.open(out))
    assert len(rows) == 7 and rows[-1]["conversations"][1] == {"from": "assistant", "value": "Yo"}
    assert rows[0]["images"] == [{"id": 0, "url": "wide.png"}]
    r = cli("datacopilot", "merge", str(data), str(other), "-o", str(out))
    assert r.exit_code == 1 and "--force" in r.stderr
    assert cli("datacopilot", "merge", str(data), str(other), "-o", str(out), "--force").exit_code == 0
    assert len(list(MMDataset.open(out))) == 7


def test_stats_and_report(data, cli, tmp_path):
    report = tmp_path / "report.html"
    doc = json_of(cli("datacopilot", "stats", str(data), "--report", str(report), "--json"))
    assert doc["rows"] == 6 and doc["unreadable_rows"] == 1 and doc["schemas"] == {"llava": 6}
    assert doc["turns_per_row"]["min"] == 2 and doc["turns_per_row"]["max"] == 6
    assert doc["image_width"]["count"] == 3 and doc["image_width"]["max"] == 200
    assert doc["images_unreadable"] == 1 and doc["image_urls"] == 1
    assert sum(doc["text_chars"]["histogram"]["counts"]) == 6
    page = report.read_text()
    assert page.count("data:image/png;base64,") == 5 and "<script" not in page
    r = cli("datacopilot", "stats", str(data), "--report", str(report))
    assert r.exit_code == 1 and "--force" in r.stderr
    r = cli("datacopilot", "stats", str(data), "--no-images")
    assert r.exit_code == 0 and "image_width: count: 0" in r.stdout
