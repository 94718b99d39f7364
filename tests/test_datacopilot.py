"""DataCopilot formats, schemas, validation and conversion on generated datasets and images."""

from __future__ import annotations

import json

import pytest

from helpers import json_of, json_lines, picture
from mixcli.datacopilot import MMDataset, convert, detect, schema
from mixcli.datacopilot.io import open_writer, read_records
from mixcli.datacopilot.validate import check_record, run_validate


def _mm(i, image="a.png", question="<image>\nWhat is this?", answer="A cat."):
    row = {"id": f"r{i}", "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        row["image"] = image
    return row


MM = _mm(0)
MIX = {"id": "x", "images": [{"id": 0, "url": "a.png"}, {"id": 1, "url": "b.png"}],
       "conversations": [{"from": "user", "value": "<image>0</image>\n<image>1</image>\nCompare."},
                         {"from": "assistant", "value": "Same."}]}
LLAVA = {"id": "l", "image": "a.png", "source": "coco",
         "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "<image>\nHi"},
                           {"from": "gpt", "value": "Hello", "weight": 0.5}]}
OPENAI = {"messages": [
    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}}, {"type": "text", "text": "Hi"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}]}
TEXT_ONLY = {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}


@pytest.fixture
def folder(tmp_path):
    picture(64, 48).save(tmp_path / "a.png")
    picture(32, 32, seed=1).save(tmp_path / "b.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return tmp_path


def _jsonl(path, rows, raw_lines=()):
    lines = [json.dumps(r) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("row, name", [(MM, "llava"), (MIX, "mix"), (LLAVA, "llava"), (OPENAI, "openai"),
                                       (TEXT_ONLY, "llava"), ({"text": "x"}, None), ([1], None)])
def test_detect(row, name):
    assert detect(row) == name


@pytest.mark.parametrize("row", [MM, MIX, LLAVA, OPENAI, TEXT_ONLY,
                                 _mm(1, image=["a.png", "b.png"], question="<image>\nx<image>"),
                                 _mm(2, question="<image>\n<image> one image, two markers"),
                                 _mm(3, question="", answer="<image>")])
@pytest.mark.parametrize("via", schema.SCHEMAS)
def test_round_trip_is_lossless(row, via):
    start = detect(row)
    assert convert(convert(row, via), start) == row


def test_single_image_list_becomes_a_string_through_other_schemas():
    row = _mm(1, image=["a.png"])
    assert convert(row, "mm") == row
    assert convert(convert(row, "mix"), "mm") == {**row, "image": "a.png"}


def test_openai_reads_string_content():
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}
    assert convert(row, "mix")["conversations"][0] == {"from": "user", "value": "Hi"}
    assert convert(convert(row, "mm"), "openai")["messages"][1]["content"] == [{"type": "text", "text": ""}]


def test_openai_places_images_as_parts():
    out = convert(MIX, "openai")
    content = out["messages"][0]["content"]
    assert [p["type"] for p in content] == ["image_url", "image_url", "text"]
    assert content[1]["image_url"]["url"] == "b.png"
    assert convert(MM, "mix")["conversations"][0]["from"] == "user"
    assert convert(MM, "llava")["image"] == "a.png"


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_formats_round_trip(tmp_path, suffix):
    rows = [_mm(i) for i in range(5)] + [_mm(9, image=None)]
    path = tmp_path / f"d{suffix}"
    with open_writer(path) as write:
        for r in rows:
            write(r)
    assert list(MMDataset.open(path)) == rows
    assert [r.row for r in read_records(path)] == list(range(1, 7))


def test_empty_outputs_are_readable(tmp_path):
    for suffix in (".jsonl", ".json", ".parquet"):
        MMDataset.from_rows([]).export(tmp_path / f"e{suffix}")
        assert list(MMDataset.open(tmp_path / f"e{suffix}")) == []


def test_existing_output_refused_and_input_protected(tmp_path):
    src = _jsonl(tmp_path / "in.jsonl", [MM])
    ds = MMDataset.open(src)
    (tmp_path / "taken.jsonl").write_text("keep\n")
    with pytest.raises(Exception, match="--force"):
        ds.export(tmp_path / "taken.jsonl", force=False)
    assert (tmp_path / "taken.jsonl").read_text() == "keep\n"
    with pytest.raises(Exception, match="input"):
        ds.export(src, force=True)
    assert ds.export(tmp_path / "out.jsonl") == 1
    assert ds.export(tmp_path / "out.jsonl", force=True) == 1


def test_dataset_ops_chain():
    ds = MMDataset.from_rows(_mm(i) for i in range(100))
    assert [r["id"] for r in ds.head(3)] == ["r0", "r1", "r2"]
    assert ds.filter(lambda r: r["id"].endswith("7")).count() == 10
    assert [r["id"] for r in ds.map(lambda r: {**r, "id": r["id"].upper()}).head(1)] == ["R0"]
    sample = [r["id"] for r in ds.sample(10, seed=1)]
    assert len(set(sample)) == 10 and sample == [r["id"] for r in ds.sample(10, seed=1)]
    shuffled = [r["id"] for r in ds.shuffle(buffer_size=8, seed=0)]
    assert sorted(shuffled) == sorted(r["id"] for r in ds) and shuffled != [r["id"] for r in ds]


def test_parallel_map_matches_serial():
    ds = MMDataset.from_rows([MM, MIX, OPENAI, {"bad": 1}])
    assert list(ds.map(detect, workers=2)) == ["llava", "mix", "openai", None]


BAD_CASES = [
    (_mm(1, image="missing.png"), "image not found"),
    (_mm(2, image="broken.png"), "undecodable image"),
    (_mm(3, question="What is this?"), "0 <image> marker(s) for 1 image(s)"),
    (_mm(4, image=None), "1 <image> marker(s) for 0 image(s)"),
    ({"id": "e", "conversations": []}, "no turns"),
    ({"conversations": [{"from": "gpt", "value": "A"}, {"from": "human", "value": "Q"}]}, "expected 'user'"),
    (_mm(5, answer=""), "turn 2 has empty text"),
    ({"conversations": [{"from": "human", "value": "Q"}]}, "last turn is not an assistant answer"),
    ({"text": "no schema"}, "unknown schema"),
    ({"conversations": [{"from": "robot", "value": "Q"}]}, "unknown role 'robot'"),
    ({"conversations": [{"from": ["human"], "value": "Q"}]}, "role is a list"),
]


@pytest.mark.parametrize("row, reason", BAD_CASES)
def test_each_bad_row_is_reported(folder, row, reason):
    from mixcli.datacopilot.io import Record

    report = check_record(Record(7, row), folder)
    assert not report.ok and report.row == 7
    assert any(reason in e for e in report.errors), report.errors


def test_good_rows_and_urls_pass(folder):
    from mixcli.datacopilot.io import Record

    for row in (MM, MIX, LLAVA, OPENAI, TEXT_ONLY):
        assert check_record(Record(1, row), folder).ok, row
    url = check_record(Record(1, _mm(1, image="https://example.com/x.png")), folder)
    assert url.ok and "URL" in url.warnings[0]


def test_validate_sanitizes(folder):
    src = _jsonl(folder / "d.jsonl", [MM, _mm(1, image="missing.png"), MIX], raw_lines=["", "{oops"])
    before = src.read_bytes()
    seen = []
    summary = run_validate(MMDataset.open(src).records(), folder, good=folder / "good.jsonl",
                           rejects=folder / "rej.jsonl", inputs=(src,), on_problem=seen.append)
    assert (summary["rows"], summary["good"], summary["bad"]) == (4, 2, 2)
    assert [p["row"] for p in seen] == [2, 5]  # line numbers: line 4 is blank
    assert "bad JSON" in seen[1]["reason"]
    assert list(MMDataset.open(folder / "good.jsonl")) == [MM, MIX]
    rejects = list(MMDataset.open(folder / "rej.jsonl"))
    assert [r["row"] for r in rejects] == [2, 5] and rejects[1]["data"] == "{oops"
    assert src.read_bytes() == before


def test_validate_cli(folder, cli):
    src = _jsonl(folder / "d.jsonl", [MM, _mm(1, image="missing.png")], raw_lines=["[1,"])
    r = cli("datacopilot", "validate", str(src), "--json")
    doc = json_of(r, code=1)
    assert doc["bad"] == 2 and doc["problems_total"] == 2 and {p["row"] for p in doc["problems"]} == {2, 3}
    r = cli("datacopilot", "validate", str(src), "--images", "skip")
    assert r.exit_code == 1 and "row 3: error: bad JSON" in r.stdout and "row 2" not in r.stdout
    good = _jsonl(folder / "g.jsonl", [MM, MIX])
    assert cli("datacopilot", "validate", str(good)).exit_code == 0
    other = folder / "sub"
    other.mkdir()
    assert cli("datacopilot", "validate", str(good), "--image-root", str(other)).exit_code == 1


def test_info_and_head_cli(folder, cli):
    src = _jsonl(folder / "d.jsonl", [MM, _mm(1, image="gone.png"), OPENAI, _mm(2, image="http://h/x.jpg")])
    doc = json_of(cli("datacopilot", "info", str(src), "--json"))
    assert doc["rows"] == 4 and doc["schemas"] == {"llava": 3, "openai": 1}
    assert doc["images"] == {"referenced": 4, "missing": 1, "urls": 1}
    lines = json_lines(cli("datacopilot", "head", str(src), "-n", "2", "--to", "mix"))
    assert len(lines) == 2 and lines[0]["images"] == [{"id": 0, "url": "a.png"}]
    assert json_of(cli("datacopilot", "head", str(src), "-n", "1", "--json")) == [MM]


def test_convert_cli_round_trip(folder, cli):
    rows = [MM, MIX, LLAVA, OPENAI]
    src = _jsonl(folder / "d.jsonl", rows, raw_lines=["not json", json.dumps({"foo": 1}),
                                                    json.dumps({"conversations": [{"from": "human", "value": None}]})])
    r = cli("datacopilot", "convert", str(src), "--to", "openai", "-o", str(folder / "o.parquet"), "--json")
    assert json_of(r)["skipped"] == 3 and "3 rows skipped" in r.stderr
    assert all(detect(x) == "openai" for x in MMDataset.open(folder / "o.parquet"))
    r = cli("datacopilot", "convert", str(src), "--to", "openai", "-o", str(folder / "o.parquet"))
    assert r.exit_code == 1 and "--force" in r.stderr
    back = [convert(x, detect(orig)) for x, orig in zip(MMDataset.open(folder / "o.parquet"), rows)]
    assert back == rows
    assert cli("datacopilot", "convert", str(src), "--to", "yaml", "-o", str(folder / "y.jsonl")).exit_code == 2


def test_missing_input_is_one_line_error(tmp_path, cli):
    r = cli("datacopilot", "info", str(tmp_path / "nope.jsonl"))
    assert r.exit_code == 1 and r.stderr.startswith("error: dataset not found")


def test_json_array_streams_across_chunks(tmp_path, monkeypatch):
    from mixcli.datacopilot import io

    rows = [_mm(i, answer="x" * (i * 7)) for i in range(40)] + [12345, "s", [1, 2]]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows, indent=1))
    monkeypatch.setattr(io, "_read_chunk", lambda f, rest: rest + f.read(13))
    assert [r.data for r in read_records(path)] == rows
    path.write_text('[{"a": 1}, {"b": ')
    with pytest.raises(Exception, match="bad JSON after row 1"):
        list(read_records(path))
    path.write_text('{"a": 1}')
    with pytest.raises(Exception, match="not a JSON array"):
        list(read_records(path))


def test_failed_output_leaves_nothing(tmp_path, cli):
    rows = [{**MM, "id": 1}, {**MM, "id": "two"}]  # id: int then str cannot share a Parquet column
    src = _jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "o.parquet"
    r = cli("datacopilot", "convert", str(src), "--to", "mix", "-o", str(out))
    assert r.exit_code == 1 and r.stderr.startswith("error: rows 1..") and ".jsonl" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    r = cli("datacopilot", "info", str(tmp_path / "bad.parquet"))
    assert r.exit_code == 1 and "not a Parquet file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
