"""DataCopilot schema names mean what their projects read and write (issue 14), and README shows each.

llava: LLaVA's `LazySupervisedDataset` reads `image` (a string; a list in LLaVA-NeXT for several images).
mm: PaddleMIX DataCopilot's SCHEMA.MM, the same layout. mix: PaddleMIX DataCopilot's SCHEMA.MIX, images as
{"id", "url"} objects and `<image>N</image>` markers. openai: chat-completions messages with parts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers import json_of
from mixcli.datacopilot import MMDataset, convert, detect, schema
from mixcli.datacopilot.schema import to_canonical

REPO = Path(__file__).resolve().parent.parent

# A row as LLaVA's llava_v1_5_mix665k.json holds it.
LLAVA_REAL = {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
              "conversations": [{"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
                                {"from": "gpt", "value": "The bus in the image is white and red."},
                                {"from": "human", "value": "What feature can be seen on the back of the bus?"},
                                {"from": "gpt", "value": "The back of the bus features an advertisement."}]}
LLAVA_TEXT = {"id": "i6IyJda_0", "model": "", "conversations": [{"from": "human", "value": "Hi"},
                                                                 {"from": "gpt", "value": "Hello"}]}
LLAVA_MULTI = {"id": "m", "image": ["a.jpg", "b.jpg"],
               "conversations": [{"from": "human", "value": "<image>\n<image>\nSame?"},
                                 {"from": "gpt", "value": "No."}]}
# PaddleMIX's _convert_mm_mix writes this for an MM row.
MIX_REAL = {"id": "000000033471", "images": [{"id": 0, "url": "coco/train2017/000000033471.jpg"}],
            "conversations": [{"from": "user",
                               "value": "<image>0</image>\nWhat are the colors of the bus in the image?"},
                              {"from": "assistant", "value": "The bus in the image is white and red."},
                              {"from": "user", "value": "What feature can be seen on the back of the bus?"},
                              {"from": "assistant", "value": "The back of the bus features an advertisement."}]}
SHAREGPT_IMAGES = {"images": ["a.jpg"], "conversations": [{"from": "human", "value": "<image>Q"},
                                                          {"from": "gpt", "value": "A"}]}


def test_llava_writes_what_llava_reads():
    for row in (MIX_REAL, convert(LLAVA_REAL, "openai")):
        out = convert(row, "llava")
        assert out["image"] == "coco/train2017/000000033471.jpg" and "images" not in out
    assert convert(LLAVA_MULTI, "llava")["image"] == ["a.jpg", "b.jpg"]
    assert convert(convert(LLAVA_MULTI, "openai"), "llava") == LLAVA_MULTI
    assert "image" not in convert(LLAVA_TEXT, "llava")


def test_real_llava_rows_are_detected_as_llava():
    assert [detect(r) for r in (LLAVA_REAL, LLAVA_TEXT, LLAVA_MULTI, SHAREGPT_IMAGES)] == ["llava"] * 4
    assert convert(SHAREGPT_IMAGES, "llava")["image"] == "a.jpg"


def test_mm_is_llava_layout():
    assert convert(LLAVA_REAL, "mm") == LLAVA_REAL == convert(MIX_REAL, "mm")


def test_mix_is_paddlemix_mix():
    assert detect(MIX_REAL) == "mix"
    assert convert(LLAVA_REAL, "mix") == MIX_REAL
    assert convert(LLAVA_TEXT, "mix")["images"] is None
    two = convert(LLAVA_MULTI, "mix")
    assert two["images"] == [{"id": 0, "url": "a.jpg"}, {"id": 1, "url": "b.jpg"}]
    assert two["conversations"][0]["value"] == "<image>0</image>\n<image>1</image>\nSame?"


def test_mix_markers_name_their_images():
    row = {"id": 1, "images": [{"id": 0, "url": "a.png", "width": 10}, {"id": 1, "url": "b.png"}],
           "conversations": [{"from": "user", "value": "<image>1</image> before <image>0</image>"},
                             {"from": "assistant", "value": "ok"}]}
    assert to_canonical(row)["images"] == ["b.png", "a.png"]
    assert convert(row, "llava")["image"] == ["b.png", "a.png"]
    assert convert(row, "mix") == row
    old_style = {"images": ["a.png"], "conversations": [{"from": "user", "value": "<image>Q"},
                                                        {"from": "assistant", "value": "A"}]}
    assert convert(old_style, "mix")["images"] == [{"id": 0, "url": "a.png"}]


def test_openai_text_has_no_stray_newline():
    messages = convert(LLAVA_REAL, "openai")["messages"]
    assert messages[0]["content"] == [
        {"type": "image_url", "image_url": {"url": "coco/train2017/000000033471.jpg"}},
        {"type": "text", "text": "What are the colors of the bus in the image?"}]
    assert all(not p.get("text", "x").startswith("\n") for m in messages for p in m["content"])
    assert convert(convert(LLAVA_REAL, "openai"), "llava") == LLAVA_REAL
    two = convert(LLAVA_MULTI, "openai")["messages"][0]["content"]
    assert [p.get("text") for p in two] == [None, None, "Same?"]


@pytest.mark.parametrize("row", [LLAVA_REAL, LLAVA_TEXT, LLAVA_MULTI, MIX_REAL])
@pytest.mark.parametrize("via", schema.SCHEMAS)
def test_round_trips(row, via):
    assert convert(convert(row, via), detect(row)) == row


def test_convert_cli_writes_llava_image(tmp_path, cli):
    src = tmp_path / "mix.jsonl"
    src.write_text(json.dumps(MIX_REAL) + "\n")
    out = tmp_path / "l.jsonl"
    json_of(cli("datacopilot", "convert", str(src), "--to", "llava", "-o", str(out), "--json"))
    assert list(MMDataset.open(out)) == [LLAVA_REAL]
    doc = json_of(cli("datacopilot", "info", str(out), "--json"))
    assert doc["schemas"] == {"llava": 1}


def _readme_schema_rows() -> dict[str, dict]:
    """The example row under each schema's bullet in README's "DataCopilot schemas" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("### DataCopilot schemas", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"^- `(\w+)`:.*?```json\n\s*(.*?)\n\s*```", section, flags=re.DOTALL | re.MULTILINE)
    return {name: json.loads(row) for name, row in found}


def test_readme_documents_each_schema_with_a_row_it_writes():
    rows = _readme_schema_rows()
    assert sorted(rows) == sorted(schema.SCHEMAS)
    source = rows["llava"]
    for name, row in rows.items():
        assert convert(source, name) == row, name
        assert detect(row) == ("llava" if name == "mm" else name)
