"""DataCopilot says what happened (issue 14): the real defect of a bad row, warnings for silent losses,
usage errors for bad arguments, counts that agree and read well, and a report in words."""

from __future__ import annotations

import json
import re

import pytest

from helpers import json_of, picture
from mixcli.datacopilot import MMDataset


def _row(i, image="a.png", question="<image>\nWhat is this?", answer="A cat."):
    row = {"id": i, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        row["image"] = image
    return row


def _err(result) -> str:
    """stderr with line breaks undone (rich wraps warnings to the terminal's width)."""
    return " ".join(result.stderr.split())


def _write(path, rows, raw=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in raw))
    return path


@pytest.fixture
def folder(tmp_path):
    picture(48, 32).save(tmp_path / "a.png")
    return tmp_path


@pytest.mark.parametrize("row, reason", [
    (_row(1, answer=5), "turn 2: value is an int, expected text"),
    (_row(1, answer=None), "turn 2: value is null, expected text"),
    ({**_row(1), "image": 42}, "image must be a path string or a list"),
    ({**_row(1), "image": ["a.png", 7]}, "image 2 is an int, expected a path string"),
    ({"conversations": [{"from": "robot", "value": "Q"}]},
     "turn 1: unknown role 'robot' (expected human/gpt/system"),
    ({"conversations": [{"from": ["human"], "value": "Q"}]}, "turn 1: role is a list, expected text"),
    ({"conversations": [{"value": "Q"}]}, "turn 1 has no role"),
    ({"conversations": "Q"}, "conversations is text, expected a list"),
    ({"messages": [{"role": "robot", "content": "Q"}]},
     "turn 1: unknown role 'robot' (expected user/assistant/system)"),
    ({"messages": [{"role": "user", "content": 3}]}, "turn 1: content is an int"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 3}]}]}, "image_url must be"),
    ([1, 2], "row is not an object"),
    (3, "row is not an object"),
    (None, "row is not an object"),
    ("text", "row is not an object"),
])
def test_validate_names_the_defect(folder, cli, row, reason):
    src = _write(folder / "d.jsonl", [_row(0), row])
    doc = json_of(cli("datacopilot", "validate", str(src), "--json"), code=1)
    reasons = [p["reason"] for p in doc["problems"] if p["row"] == 2]
    assert reasons and reason in reasons[0], reasons
    assert not any("unknown schema" in r for r in reasons)
    assert doc["good"] == 1


def test_stats_and_info_agree_on_rows(folder, cli):
    src = _write(folder / "d.jsonl", [_row(0), {"text": "no schema"}, [1, 2], _row(1)], raw=["{oops"])
    info = json_of(cli("datacopilot", "info", str(src), "--json"))
    stats = json_of(cli("datacopilot", "stats", str(src), "--json"))
    assert info["rows"] == stats["rows"] == 4
    assert info["unreadable_rows"] == stats["unreadable_rows"] == 1
    assert stats["unreadable_lines"] == [5] and stats["schemas"] == {"llava": 2, "unknown": 2}
    shown = cli("datacopilot", "stats", str(src)).stdout
    assert "rows: 4" in shown and "unreadable_rows: 1" in shown and "unreadable_lines: 5" in shown


def test_split_refuses_an_empty_part_unless_allowed(folder, cli):
    src = _write(folder / "d.jsonl", [_row(0)])
    a, b = folder / "a.jsonl", folder / "b.jsonl"
    r = cli("datacopilot", "split", str(src), "--ratios", "0.5,0.5", "-o", str(a), "-o", str(b))
    assert r.exit_code == 1 and "b.jsonl would get no rows" in _err(r) and "--allow-empty" in _err(r)
    assert not a.exists() and not b.exists()
    r = cli("datacopilot", "split", str(src), "--ratios", "0.5,0.5", "-o", str(a), "-o", str(b), "--allow-empty")
    assert r.exit_code == 0, r.stderr
    assert "warning:" in r.stderr and "b.jsonl got no rows" in _err(r)
    assert list(MMDataset.open(b)) == [] and len(list(MMDataset.open(a))) == 1
    assert f"{a}: 1 row, {b}: 0 rows" in r.stdout


@pytest.mark.parametrize("ratios, outs", [("0.5,0.3,0.2", 2), ("0.9", 1), ("x,y", 2), ("-1,2", 2)])
def test_split_argument_mismatch_is_a_usage_error(folder, cli, ratios, outs):
    src = _write(folder / "d.jsonl", [_row(i) for i in range(5)])
    args = [a for i in range(outs) for a in ("-o", str(folder / f"p{i}.jsonl"))]
    r = cli("datacopilot", "split", str(src), "--ratios", ratios, *args)
    assert r.exit_code == 2 and "--ratios" in _err(r), r.stderr
    assert not list(folder.glob("p*.jsonl"))


def test_sample_larger_than_the_data_warns(folder, cli):
    src = _write(folder / "d.jsonl", [_row(i) for i in range(3)])
    r = cli("datacopilot", "sample", str(src), "-n", "10", "-o", str(folder / "s.jsonl"))
    assert r.exit_code == 0 and "asked for 10 rows" in _err(r) and "has 3" in _err(r)
    r = cli("datacopilot", "sample", str(src), "-n", "3", "-o", str(folder / "t.jsonl"))
    assert r.exit_code == 0 and "warning" not in r.stderr


def test_filter_warns_about_rows_it_cannot_judge(folder, cli):
    src = _write(folder / "d.jsonl", [_row(0), {"text": "no schema"}, _row(1, answer=5)], raw=["{oops"])
    r = cli("datacopilot", "filter", str(src), "--max-turns", "9", "-o", str(folder / "f.jsonl"), "--json")
    doc = json_of(r)
    assert doc["rows"] == 1 and doc["dropped_no_schema"] == 2 and doc["dropped_unreadable"] == 1
    assert "dropped 2 rows of no known schema" in _err(r) and "dropped 1 row that could not be read" in _err(r)


def test_counts_are_pluralised(folder, cli):
    one = _write(folder / "one.jsonl", [_row(0, image="https://h/x.png")])
    two = _write(folder / "two.jsonl", [_row(0), _row(1)])
    outputs = [
        cli("datacopilot", "validate", str(one)).stdout,
        cli("datacopilot", "convert", str(one), "--to", "mix", "-o", str(folder / "c.jsonl")).stdout,
        cli("datacopilot", "merge", str(one), "-o", str(folder / "m.jsonl")).stdout,
        cli("datacopilot", "filter", str(one), "-o", str(folder / "f.jsonl")).stdout,
        cli("datacopilot", "dedup", str(two), "-o", str(folder / "d.jsonl")).stdout,
    ]
    text = "\n".join(outputs)
    assert "1 row: 1 good, 0 bad, 1 warning" in text
    assert "wrote 1 row (mix)" in text and "wrote 1 row from 1 file" in text
    assert "2 rows, 1 cluster, 1 duplicate; wrote 1 row" in text
    assert not re.search(r"\b1 (rows|warnings|clusters|duplicates|files)\b", text), text


def test_stats_numbers_are_rounded_integers_where_counts(folder, cli):
    rows = [_row(i, answer="x" * (i * 7 + 1)) for i in range(7)] + [_row(9, image=None, question="Hi")]
    src = _write(folder / "d.jsonl", rows)
    doc = json_of(cli("datacopilot", "stats", str(src), "--json"))
    for key in ("turns_per_row", "text_chars", "images_per_row", "image_width"):
        d = doc[key]
        assert all(isinstance(d[k], int) for k in ("min", "max", "p50", "p90", "p99")), d
        assert round(d["mean"], 2) == d["mean"]
        assert all(isinstance(e, int) for e in d["histogram"]["edges"])
        assert sum(d["histogram"]["counts"]) == d["count"]
    assert doc["text_chars"]["mean"] == round(doc["text_chars"]["mean"], 2)
    assert "0000000" not in cli("datacopilot", "stats", str(src)).stdout


def test_integer_edges_cover_whole_numbers():
    from mixcli.datacopilot.stats import integer_edges

    assert integer_edges(2, 6, 10).tolist() == [2, 3, 4, 5, 6, 7]
    edges = integer_edges(0, 999, 40)
    assert len(edges) <= 41 and edges[0] == 0 and edges[-1] > 999 and len(set(edges[1:] - edges[:-1])) == 1


def test_report_in_words_with_unreadable_lines_and_samples(folder, cli):
    src = _write(folder / "d.jsonl", [_row(0), _row(1, image="gone.png"), _row(2, image="https://h/x.png")],
                 raw=["{oops", "[1,"])
    report = folder / "r.html"
    assert cli("datacopilot", "stats", str(src), "--report", str(report)).exit_code == 0
    page = report.read_text()
    assert "Turns per row" in page and "90th percentile" in page and "turns_per_row" not in page
    assert "Lines that could not be read" in page and "<td class='n'>4</td>" in page and "<td class='n'>5</td>" in page
    samples = page.split("class='samples'", 1)[1]
    assert samples.count("data:image/jpeg;base64,") == 1  # a.png; the missing file and the URL as paths
    assert "gone.png (unreadable)" in samples and "https://h/x.png" in samples
    assert "What is this?" in samples


@pytest.mark.parametrize("command, new, old", [
    ("validate", "--check-images", ["--images", "skip"]),
    ("stats", "--read-images", ["--no-images"]),
    ("dedup", "--near-images", ["--images"]),
])
def test_images_options_have_distinct_names(folder, cli, command, new, old):
    help_text = cli("datacopilot", command, "--help").stdout
    assert new in help_text and not re.search(r"--images\b", help_text.replace(new, ""))
    src = _write(folder / "d.jsonl", [_row(0)])
    r = cli("datacopilot", command, str(src), *old)
    assert r.exit_code == 0, r.stderr
    assert "is now" in r.stderr
